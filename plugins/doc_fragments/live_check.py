# Copyright (c) fediscale.mastodon contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the live-check modules share: they only read, and some of them watch for a peak."""


class ModuleDocFragment:
    # Every live check, and the advice made from them: reads only.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Reads only; the same in check mode.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
"""

    # The modules that can watch a load come and go.
    WATCH = r"""
options:
  watch_seconds:
    description:
      - Read again every O(watch_interval) for this many seconds and return the most seen at once. V(0) reads once.
      - For a load that comes and goes (a deploy's overlap, a C(tootctl) run, a burst of jobs); run the task with
        C(async) to watch while something else makes the load.
    type: float
    default: 0
  watch_interval:
    description: Seconds between two readings while watching.
    type: float
    default: 0.2
"""
