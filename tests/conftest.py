"""Make the collection importable as ansible_collections.fediscale.mastodon, as Ansible sees it."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _collections_root() -> Path:
    if ROOT.parent.name == "fediscale" and ROOT.parent.parent.name == "ansible_collections":
        return ROOT.parents[2]
    base = ROOT / ".rig"
    link = base / "ansible_collections" / "fediscale" / "mastodon"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT)
    return base


COLLECTIONS_ROOT = _collections_root()
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))
