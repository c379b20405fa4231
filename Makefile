# mdegate — the two quick-start commands, plus benchmarks.
.PHONY: run test test-sanitizers fuzz bench build clean install

## Build, then run the MDE simulator and the gateway (config/local.yaml) in the foreground.
run:
	scripts/run-local.sh

## Install what the build needs (apt), build, and run every test.
test:
	scripts/test.sh

## The unit and integration suites on an AddressSanitizer build (.build-asan); SANITIZER=thread
## for ThreadSanitizer (.build-tsan). A report in any process, the daemon included, fails the run.
test-sanitizers:
	scripts/test-sanitizers.sh

## Measure the quota figures (the performance targets in docs/benchmarks.md) in a release build: one
## gateway, then three sharing one quota in PostgreSQL; latency measures nginx-light's proxy_pass next
## to mdegate (scripts/install-bench-deps.sh installs both).
bench:
	scripts/install-bench-deps.sh
	swift build -c release $(BUILDFLAGS)
	$$(swift build -c release --show-bin-path $(BUILDFLAGS))/mdegate-bench burst
	$$(swift build -c release --show-bin-path $(BUILDFLAGS))/mdegate-bench shared --hosts 3
	$$(swift build -c release --show-bin-path $(BUILDFLAGS))/mdegate-bench latency

## Coverage-guided fuzzing (libFuzzer, AddressSanitizer): the request path and the configuration,
## FUZZ_SECONDS (default 120) per target, on copies of Fuzz/Corpus; prints executions per target.
fuzz:
	scripts/fuzz.sh

build:
	scripts/install-deps.sh
	swift build

clean:
	rm -rf .build .build-asan .build-tsan run

## Install the release binary (Swift runtime linked in: no toolchain needed on the host), the systemd units and an example config (as root; DESTDIR-aware).
## Units, sysusers.d and tmpfiles.d go under $(PREFIX)/lib, where systemd looks for them and
## /etc/systemd/system stays the admin's (systemctl edit); an existing config is never replaced.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
CONFDIR ?= /etc/mdegate
# e.g. BUILDFLAGS="--scratch-path /tmp/build" to build elsewhere than .build
BUILDFLAGS ?=

install:
	scripts/install-deps.sh
	swift build -c release --static-swift-stdlib --product mdegate $(BUILDFLAGS)
	install -D -m 0755 "$$(swift build -c release --show-bin-path $(BUILDFLAGS))/mdegate" "$(DESTDIR)$(BINDIR)/mdegate"
	install -d -m 0755 "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)" "$(DESTDIR)$(TMPFILESDIR)"
	sed 's|/usr/local/bin/mdegate|$(BINDIR)/mdegate|g' systemd/mdegate.service > "$(DESTDIR)$(UNITDIR)/mdegate.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/mdegate.service"
	install -m 0644 systemd/mdegate.socket "$(DESTDIR)$(UNITDIR)/mdegate.socket"
	install -m 0644 systemd/mdegate.sysusers "$(DESTDIR)$(SYSUSERSDIR)/mdegate.conf"
	install -m 0644 systemd/mdegate.tmpfiles "$(DESTDIR)$(TMPFILESDIR)/mdegate.conf"
	install -d -m 0750 "$(DESTDIR)$(CONFDIR)"
	[ -e "$(DESTDIR)$(CONFDIR)/config.yaml" ] || install -m 0640 config/mdegate.yaml "$(DESTDIR)$(CONFDIR)/config.yaml"
	@# On the live system only: create the user and groups, give the config its owners, reload units.
	if [ -z "$(DESTDIR)" ]; then \
		systemd-sysusers "$(SYSUSERSDIR)/mdegate.conf" && \
		systemd-tmpfiles --create "$(TMPFILESDIR)/mdegate.conf" && \
		{ systemctl daemon-reload 2>/dev/null || true; } && \
		echo "installed; start with: systemctl enable --now mdegate.socket mdegate.service"; \
	fi
