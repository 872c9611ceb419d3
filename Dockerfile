# Messenger's images. The default (last) stage is the production image: `producer` and `worker` only — the Twilio
# simulator is never compiled into it. The `twilio-sim` stage builds the simulator's own image, for the compose
# files' local stack and load tests:
#
#   docker build -t messenger .                         # production: producer + worker
#   docker build --target twilio-sim -t twilio-sim .    # the simulator
FROM rust:1.95-bookworm AS toolchain
WORKDIR /src
COPY . .

FROM toolchain AS build-sim
RUN cargo build --release --locked -p messenger-twilio-sim --bin twilio-sim \
 && cp target/release/twilio-sim /usr/local/bin/

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 messenger
USER messenger
ENV MESSENGER_LOG_FORMAT=json

FROM runtime AS twilio-sim
COPY --from=build-sim /usr/local/bin/twilio-sim /usr/local/bin/
CMD ["twilio-sim", "--listen", "0.0.0.0:8099"]

FROM toolchain AS build
RUN cargo build --release --locked -p messenger-producer -p messenger-worker --bins \
 && cp target/release/producer target/release/worker /usr/local/bin/

FROM runtime AS production
COPY --from=build /usr/local/bin/producer /usr/local/bin/worker /usr/local/bin/
CMD ["worker"]
