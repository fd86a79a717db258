# syntax=docker/dockerfile:1
#
# The central image: one `otwatch` binary, run as `otwatch collector`,
# `otwatch detector`, `otwatch history` (the Kubernetes manifests in k8s/) or
# `otwatch serve`.
#
#   docker build -t otwatch:0.1.0 .
#
# Builder: the Rust toolchain plus what librdkafka's build needs (a C/C++
# compiler, make, cmake, perl). Everything else (protobuf, TLS) is Rust.
FROM rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake perl pkg-config \
 && rm -rf /var/lib/apt/lists/*
# zlib linked in statically: the runtime image has no libz.
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .
# The release profile keeps panics unwinding: a failing component is caught
# by the supervisor, reported on /healthz, and the process exits 70.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin otwatch \
 && install -D -m 0755 target/release/otwatch /out/otwatch \
 && strip /out/otwatch
# The runtime image has glibc, libgcc and libstdc++ only: refuse a binary
# that needs more.
RUN if ldd /out/otwatch | grep -v -E 'linux-vdso|ld-linux|lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+)\.so'; then \
      echo "otwatch links a library the runtime image lacks (above)" >&2; exit 1; \
    fi

# Runtime: distroless (glibc, CA certificates, no shell, no package
# manager), user nonroot (65532), as the manifests' securityContext expects.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/otwatch /usr/local/bin/otwatch
USER 65532:65532
# gRPC ingest (collector), /metrics + /healthz + /readyz.
EXPOSE 4317 9464
ENTRYPOINT ["/usr/local/bin/otwatch"]
CMD ["serve", "--config", "/etc/otwatch/otwatch.toml"]
