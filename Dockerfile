# syntax=docker/dockerfile:1
#
# warren's container image: one static binary in an otherwise empty image,
# run as a non-root user. Proxy mode needs nothing more. Host mode needs
# NET_ADMIN and /dev/net/tun, and Docker gives capabilities only to root, so
# its recipes (deploy/) run the container as user 0 with every other
# capability dropped.
#
#   docker build -t warren:local --build-arg VERSION=$(git describe --tags --always) \
#       --build-arg COMMIT=$(git rev-parse HEAD) .
#
# The config comes from /etc/warren/wg0.conf (mount it there) or from the
# environment (WARREN_WG_CONFIG, WARREN_PRIVATE_KEY, ...: see the README).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS=linux
ARG TARGETARCH
RUN VERSION=$VERSION COMMIT=$COMMIT GOOS=$TARGETOS GOARCH=$TARGETARCH scripts/build.sh rootfs /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["warren"]
CMD ["up"]
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=3 CMD ["warren", "healthcheck"]
