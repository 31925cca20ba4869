# Stock Bazaar: the checks CI runs, and the heavier runs that stay out of it.
.PHONY: verify test build release lint fmt

# Everything CI runs: formatting, lints, the full test suite.
verify: lint test

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# The system tests start the service binaries, so build those first.
test:
	cargo build --workspace --bins
	cargo test --workspace

build:
	cargo build --workspace --bins

release:
	cargo build --release --workspace --bins

fmt:
	cargo fmt --all

# Container image for compose.yaml, built from the host's release binaries
# with nothing pulled (FROM scratch; see docs/DOCKER.md).
.PHONY: image
image: release
	docker/build-image.sh
