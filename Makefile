# fediscale.mastodon: one entry point for tests, lint and the local cluster.
#   make test                     lint, sanity, unit and plan tests (also under the oldest and newest Ansible),
#                                 every Molecule scenario
#   make unit                     the fast loop: model, filters, plan playbook
#   make watch                    make unit again on every save
#   make compat                   the unit and plan tests under the oldest and newest Ansible (tools/compat.txt)
#   make compat-sanity            the same, and ansible-test sanity under each
#   make molecule SCENARIO=smoke  one Molecule scenario (default: all) on Debian 13; DEBIAN=12 for Debian 12,
#                                 REDIS_SERVER=valkey for Valkey instead of Redis
#   make demo                     the local container cluster with site.yml on it, then a load: planned against peak
#   make demo DEBIAN=12           the same cluster on Debian 12
#   make demo-load                the load again on the running demo cluster
#   make bench                    the plan benchmark
#   make bench-pooling            pgbench direct against through pgbouncer, on the demo cluster
#   make bench-rerun              a site.yml run that changes nothing against gathering facts, on the demo cluster
#   make clean                    remove containers, images and the engine the rig started
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
RIG := $(ROOT)/tools/rig
COLLECTIONS := $(ROOT)/.rig
TIMINGS := $(ROOT)/.rig/timings
SCENARIO ?=
SCENARIOS := $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
# The Debian release the scenarios run on; a full run adds these scenarios on Debian 12.
DEBIAN ?= 13
ALSO_ON_DEBIAN_12 := cluster
# The Redis package family (redis or valkey); a full run adds these scenarios with Valkey.
REDIS_SERVER ?= redis
ALSO_WITH_VALKEY := redis sentinel
# Molecule runs in two queues side by side: these scenarios' runs in one, every other in the second (about
# half the time each: measured 2026-12-01, app 528 s, cluster 1524 s and redis 315 s, with cluster on Debian 12
# about 750 s and redis with Valkey 150 s; adopt 1169 s, database 1233 s, sentinel 464 s and with Valkey 262 s,
# smoke 80 s).
# Runs of one scenario share container names and stay in one queue; every platform has its own address.
FIRST_QUEUE := cluster app redis
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
# Runs see the collections tools/rig links into .rig, not the venv's ansible package (about 100 collections,
# each listed again by mitogen for every module call).
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH := false
export PATH := $(BIN):$(PATH)

# Run a stage and record how long it took.
timed = start=$$(date +%s); $(2); echo "$(1) $$(( $$(date +%s) - start ))s" >> $(TIMINGS)

.PHONY: help test unit watch compat compat-sanity lint sanity molecule demo demo-load bench bench-pooling bench-rerun clean venv collection image

help:
	@sed -n '2,16p' Makefile

venv:
	@$(RIG) venv

collection: venv
	@$(RIG) collection

image: venv
	@$(RIG) image

# The base images build (debootstrap: network and disk) while the checks run (processor); Molecule waits for
# them. A failed check stops the build too (its own process group).
test: venv collection
	@mkdir -p $(dir $(TIMINGS)) $(ROOT)/.rig/logs; : > $(TIMINGS)
	@image_start=$$(date +%s); setsid $(RIG) image > $(ROOT)/.rig/logs/image.log 2>&1 & image=$$!; \
	  trap 'kill -- -'$$image' 2>/dev/null || true' EXIT; \
	  $(call timed,lint,$(MAKE) --no-print-directory lint); \
	  $(call timed,sanity,$(MAKE) --no-print-directory sanity); \
	  $(call timed,unit,$(MAKE) --no-print-directory unit); \
	  $(call timed,compat,$(MAKE) --no-print-directory compat); \
	  status=0; wait $$image || status=$$?; trap - EXIT; cat $(ROOT)/.rig/logs/image.log; [ $$status = 0 ]; \
	  echo "image (beside the checks) $$(( $$(date +%s) - image_start ))s" >> $(TIMINGS)
	@$(call timed,molecule,$(MAKE) --no-print-directory molecule)
	@echo "== stage timings =="; cat $(TIMINGS)

unit: venv collection
	$(BIN)/python -m pytest -q tests/unit tests/plan

compat: venv
	@$(RIG) compat

# The same, and ansible-test sanity under each (not in make test: several minutes more).
compat-sanity: venv
	@COMPAT_SANITY=1 $(RIG) compat

watch: venv collection
	@$(BIN)/python $(ROOT)/tools/watch.py unit

lint: venv collection
	$(BIN)/ansible-lint --offline
	@# Every filter and role documents itself for ansible-doc.
	@for filter in $$(sed -n 's/^ *"\([a-z_]*\)": [a-z_]*,*}*$$/\1/p' plugins/filter/*.py); do \
	  $(BIN)/ansible-doc -t filter fediscale.mastodon.$$filter > /dev/null || exit 1; done
	@for role in $$(ls roles); do \
	  $(BIN)/ansible-doc -t role fediscale.mastodon.$$role > /dev/null || exit 1; done

# ansible-test works on a git checkout at ansible_collections/NAMESPACE/NAME.
sanity: venv
	@$(RIG) sanity-pip
	@$(RIG) sanity-tree
	@cd $(ROOT)/.rig/sanity/ansible_collections/fediscale/mastodon && \
	  $(BIN)/ansible-test sanity --python 3.11 --color no

molecule: image collection
	@mkdir -p $(dir $(TIMINGS))
	@cd $(ROOT) && export FEDISCALE_RIG_APT_PROXY=$$($(RIG) cache) && \
	  runs="$(foreach scenario,$(or $(SCENARIO),$(SCENARIOS)),$(scenario):$(DEBIAN):$(REDIS_SERVER))"; \
	  if [ -z "$(SCENARIO)" ] && [ "$(DEBIAN)" = 13 ] && [ "$(REDIS_SERVER)" = redis ]; then \
	    runs="$$runs $(ALSO_ON_DEBIAN_12:=:12:redis) $(ALSO_WITH_VALKEY:=:13:valkey)"; fi; \
	  first=""; second=""; for run in $$runs; do \
	    if [[ " $(FIRST_QUEUE) " == *" $${run%%:*} "* ]]; then first="$$first $$run"; else second="$$second $$run"; fi; \
	  done; \
	  $(RIG) molecule "$$first" "$$second"

# The local container cluster, left running: molecule/cluster (make clean removes it). Its side effect is the
# load that compares the plan with the peak (molecule/cluster/side_effect.yml).
demo: image collection
	@cd $(ROOT) && export FEDISCALE_RIG_DEBIAN=$(DEBIAN) FEDISCALE_RIG_IMAGE=$$($(RIG) image-name $(DEBIAN)) \
	    FEDISCALE_RIG_APT_PROXY=$$($(RIG) cache) && \
	  $(BIN)/molecule converge -s cluster && $(BIN)/molecule side-effect -s cluster && \
	  echo "The cluster is up: molecule login -s cluster --host demo-web1; make clean removes it."

demo-load: collection
	@cd $(ROOT) && FEDISCALE_RIG_DEBIAN=$(DEBIAN) $(BIN)/molecule side-effect -s cluster

bench: venv collection
	$(BIN)/python benchmarks/plan_speed.py

# Brings the demo cluster up (or converges it) first; leaves it as the plan made it.
bench-pooling: demo
	@cd $(ROOT) && export FEDISCALE_RIG_IMAGE=$$($(RIG) image-name $(DEBIAN)) && \
	  $(BIN)/python benchmarks/pgbench_pooling.py

# Converges the demo cluster first: the site arms must change nothing. Under mitogen, as README "Faster runs";
# beside them, site.yml's skeleton (its tasks and hosts, none of its work: benchmarks/README.md).
bench-rerun: demo
	$(BIN)/python benchmarks/rerun_speed.py --rounds 3 --forks 10 --mitogen --preload --skeleton --only mitogen

clean:
	@$(RIG) clean
