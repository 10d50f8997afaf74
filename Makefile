# vxland: the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3
# command -> Debian package, to install only what is missing
NEEDED_COMMANDS := ip:iproute2 nft:nftables bridge:iproute2 iperf3:iperf3 ethtool:ethtool ping:iputils-ping tshark:tshark tcpdump:tcpdump etcd:etcd-server etcdctl:etcd-client iptables:iptables ip6tables:iptables iptables-legacy:iptables systemd-analyze:systemd openssl:openssl strace:strace setpriv:util-linux findmnt:util-linux unshare:util-linux

.PHONY: install system-deps python-deps test unit integration demo lint clean fuzz

install: system-deps python-deps

system-deps:
	@missing=""; for pair in $(NEEDED_COMMANDS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing (run as root to install them)"; exit 0; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o DPkg::Lock::Timeout=600 $$missing >/dev/null; \
	fi

python-deps:
	$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test,bench]'

# Unit tier (no root), then the integration tier (root: namespaces, TUN, kernel vxlan peers)
# with the offloads (TUN TSO/GRO, UDP GSO/GRO), then the data-plane tests whose behaviour
# depends on them (marked "offload") again without (vxland --no-offload, taken from the
# environment like every flag). Two test workers each; integration tests go to a worker a
# file at a time, so a module's lab fixture is built once. Timing goals are bench figures.
test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -n 2 --dist worksteal tests/unit
	@if [ "$$(id -u)" = 0 ]; then \
	  $(PYTHON) -m pytest -n 2 --dist loadfile tests/integration && \
	  echo "=== offload tests again, offloads off (FLANNELD_NO_OFFLOAD=1) ===" && \
	  FLANNELD_NO_OFFLOAD=1 $(PYTHON) -m pytest -n 2 --dist loadfile -m offload tests/integration; \
	else \
	  echo "*** NOT ROOT: integration tests (namespaces, TUN, kernel vxlan) NOT RUN ***"; exit 1; \
	fi

unit: python-deps
	$(PYTHON) -m pytest tests/unit

integration: install
	$(PYTHON) -m pytest -n 2 --dist loadfile tests/integration

# e.g. make demo DEMO_ARGS="--etcd-api v2" (a cluster of the etcd v2 era) or DEMO_ARGS=--static
DEMO_ARGS ?=
demo: install
	$(PYTHON) -m vxlan.ctl demo $(DEMO_ARGS)

# Every parser of outside input under atheris for FUZZ_SECONDS in all (make test runs a short
# hypothesis pass of the same targets). New corpus entries land in tests/fuzz/corpus/.
FUZZ_SECONDS ?= 660
fuzz: python-deps
	$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[fuzz]'
	$(PYTHON) -m tests.fuzz --seconds $(FUZZ_SECONDS)

lint:
	$(PYTHON) -m ruff check .

clean:
	$(PYTHON) -m vxlan.ctl lab clean || true
	rm -rf build *.egg-info fastpath/_fastpath.c fastpath/*.so .pytest_cache
