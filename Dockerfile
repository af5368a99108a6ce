# The agent's image: `cargo xtask image` (or `docker build -t ebpf-proxy-agent:dev .`).
#
# Stage 1 builds the agent with its eBPF object embedded: the eBPF crate needs
# nightly with rust-src (-Z build-std=core) and bpf-linker linked against
# nightly's own libLLVM, exactly as `cargo xtask setup` arranges on a
# developer machine.
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
RUN rustup toolchain install nightly --profile minimal --component rust-src
RUN set -eux; \
    sysroot="$(rustc +nightly --print sysroot)"; \
    major="$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"; \
    lib="$(ls "$sysroot"/lib/libLLVM.so."$major"* "$sysroot"/lib/libLLVM-"$major"* 2>/dev/null | head -n1)"; \
    mkdir -p /opt/llvm/lib; \
    ln -s "$lib" /opt/llvm/lib/libLLVM.so; \
    LLVM_PREFIX=/opt/llvm cargo install bpf-linker --locked --no-default-features --features "llvm-$major"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package proxy-agent \
 && cp target/release/proxy-agent /usr/local/bin/proxy-agent

# Stage 2: the binary on distroless (glibc, CA certificates, no shell, no
# package manager): the image holds nothing an attacker could use but the
# agent itself.
#
# It runs as root, not as distroless's nonroot user: it loads BPF programs and
# pins maps in the host's bpffs, and Kubernetes grants added capabilities
# (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) to uid 0 only, having no ambient
# capabilities. The DaemonSet drops every other capability, so this root can
# do what the kernel checks those three for and nothing else.
FROM gcr.io/distroless/cc-debian12
COPY --from=builder /usr/local/bin/proxy-agent /usr/local/bin/proxy-agent
ENTRYPOINT ["/usr/local/bin/proxy-agent"]
