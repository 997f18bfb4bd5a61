# tenure: build in a full Rust image, run in a slim one as an unprivileged user.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY templates templates
RUN cargo build --release --locked && strip target/release/tenure

FROM debian:bookworm-slim
# ca-certificates for HTTPS jobs, tzdata is compiled in (chrono-tz), tini reaps job processes.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tini && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tenure --create-home tenure
COPY --from=build /src/target/release/tenure /usr/local/bin/tenure
COPY jobs.example.yaml /etc/tenure/jobs.yaml
USER tenure
WORKDIR /var/lib/tenure
ENV TENURE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/tenure"]
CMD ["validate", "/etc/tenure/jobs.yaml"]
