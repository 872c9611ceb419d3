# Builds Messenger's three binaries (producer, worker, twilio-sim) into one small runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && cp target/release/producer target/release/worker target/release/twilio-sim /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 messenger
COPY --from=build /usr/local/bin/producer /usr/local/bin/worker /usr/local/bin/twilio-sim /usr/local/bin/
USER messenger
ENV MESSENGER_LOG_FORMAT=json
CMD ["worker"]
