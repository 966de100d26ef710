# syntax=docker/dockerfile:1
#
# kvsync container image: a static binary on distroless, running as non-root.
#
#   docker build -t kvsync:dev --build-arg VERSION=v0.1.0 .
#
# As a sidecar (Kubernetes: examples/kubernetes-sidecar/deployment.yaml):
#   mount the config at /etc/kvsync/kvsync.yaml (the default CMD reads it) and
#   the folder to project into, shared with the app container; probe /readyz and
#   /healthz on port 9333 (set http.listen: 0.0.0.0:9333 in the config).
#
# As an init container, to render everything once before the app starts (no
#   actions run; exit 1 if a template cannot render):
#   args: ["run", "--once", "-c", "/etc/kvsync/kvsync.yaml"]
#
# Trying it with docker alone (embedded JetStream server plus agent):
#   docker run --rm --user "$(id -u):$(id -g)" -p 4222:4222 -p 9333:9333 \
#     -e KVSYNC_HTTP_LISTEN=0.0.0.0:9333 -v "$PWD/examples/quickstart:/work" \
#     kvsync:dev dev -c /work/kvsync.yaml --listen 0.0.0.0:4222
#   (--user: the store and out/ folders are written into the mounted folder)
#
# No HEALTHCHECK: the distroless image has no shell and no curl to run one.
# Orchestrators probe GET /readyz (ready after every projection's initial sync)
# and GET /healthz instead.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so the download layer is cached across source edits.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/kvsync ./cmd/kvsync \
    && /out/kvsync version

FROM gcr.io/distroless/static-debian12:nonroot
# distroless sets PATH=/usr/local/sbin:/usr/local/bin:...: `kvsync` resolves to
# /usr/local/bin/kvsync, so `kubectl exec POD -- kvsync kv get ...` works too.
COPY --from=build /out/kvsync /usr/local/bin/kvsync
# uid/gid 65532 (nonroot). Signalling a process of another uid (on_change with
# pidfile/process) needs the same uid or CAP_KILL; chowning projected files
# (user/group) needs CAP_CHOWN.
USER 65532:65532
EXPOSE 9333
ENTRYPOINT ["kvsync"]
CMD ["run", "-c", "/etc/kvsync/kvsync.yaml"]
