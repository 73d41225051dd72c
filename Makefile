# Docker Deep Dive Lab. As root on a Linux machine (Debian 12 / Ubuntu 24.04), three commands:
#   make lab    install what is missing, start JupyterLab on 127.0.0.1:8888, print its URL with the token
#   make test   install what is missing (plus the test tools), run the whole suite (GUEST=1: with the
#               Debian 13 guest stage, see test-guest)
#   make handouts   execute every notebook and export it to HTML with its plots, plus an index (handouts/)
#   make classroom  a classroom rehearsal on this machine: build the lab image (deploy/build-image.sh)
#                   and start JupyterHub with one lab container per learner on 127.0.0.1:8000
#                   (deploy/start-hub.sh; password LABKIT_HUB_PASSWORD, default "rehearsal")
#   (make lock      rewrite constraints.txt, the exact Python package versions every machine installs)
#   make test-guest the suite and every notebook inside a fresh Debian 13 guest (systemd, cgroup v2)
#                   under qemu, as a learner's VM runs them (tests/guest/); UPDATE_OUTPUTS=1 instead
#                   executes every notebook there and writes its outputs back to notebooks/
# All three call vagrant/provision.sh, the same script the Vagrant VM and cloud-init run, and it skips
# everything that is already in place. `make clean` stops the lab and removes test output and caches;
# `make distclean` also removes the venv.

SHELL := /bin/bash
VENV ?= $(or $(LABKIT_VENV),$(CURDIR)/.venv)
export LABKIT_VENV := $(VENV)
LAB_PORT ?= 8888
LAB_IP ?= 127.0.0.1
HANDOUTS ?= handouts

.PHONY: lab test test-guest handouts classroom provision lock clean distclean

lab:
	bash vagrant/provision.sh --lab --ip $(LAB_IP) --port $(LAB_PORT)

# (LABKIT_RUNTIME_TAKEOVER: Docker's runtime `labkit` runs this checkout's code while it is tested)
test:
	LABKIT_RUNTIME_TAKEOVER=1 bash vagrant/provision.sh --test-tools
	bash tests/run_suite.sh

test-guest:
	bash vagrant/provision.sh --test-tools
	$(VENV)/bin/python tests/guest/run.py $(if $(UPDATE_OUTPUTS),--update-outputs)

handouts:
	bash vagrant/provision.sh
	$(VENV)/bin/python -m labkit.handouts --out $(HANDOUTS)

# The hub is installed first: the image's jupyterhub is pinned to its version. See
# docs/instructor-guide.md, "A classroom on one machine, or on a cluster".
classroom:
	bash deploy/start-hub.sh --install-only
	bash deploy/build-image.sh
	LABKIT_HUB_PASSWORD=$${LABKIT_HUB_PASSWORD:-rehearsal} bash deploy/start-hub.sh

provision:
	bash vagrant/provision.sh

# constraints.txt pins every Python package provisioning installs; regenerate it after changing the
# dependencies in pyproject.toml (needs the network; see vagrant/lock.sh), then commit it.
lock:
	bash vagrant/lock.sh

clean:
	-[ -x $(VENV)/bin/labkit ] && $(VENV)/bin/labkit lab stop
	-[ -x $(VENV)/bin/labkit ] && $(VENV)/bin/labkit cleanup
	rm -rf test-output .pytest_cache .vagrant
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) labkit.egg-info
