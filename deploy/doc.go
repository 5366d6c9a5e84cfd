// Package deploy holds no code: it holds the recipes that run warren
// somewhere, and the tests that keep them right. RECIPES.md beside this
// file is the user's guide to them.
//
//   - compose/host-mode.yaml: docker compose, warren in host mode as a
//     sidecar. The app joins warren's network namespace
//     (network_mode: service:warren) and starts once warren is healthy;
//     warren runs as root with NET_ADMIN and NET_BIND_SERVICE alone,
//     /dev/net/tun, its DNS server on 127.0.0.1:53 and the namespace's
//     resolver pointed at it.
//   - compose/rootless.yaml: docker compose, warren in proxy mode with no
//     privileges. The app is only on an internal network and reaches the
//     world through warren's HTTP and SOCKS5 proxies (HTTP_PROXY,
//     ALL_PROXY), which want a user name and a password.
//   - kubernetes/warren-sidecar.yaml: a Deployment with warren as a native
//     sidecar (an init container with restartPolicy Always) in host mode:
//     the app starts once warren's startupProbe sees the tunnel up, the
//     WireGuard config comes from a Secret, the pod's DNS goes to warren.
//   - systemd/warren-host.service: the whole machine in host mode, as root
//     bounded to CAP_NET_ADMIN and CAP_NET_BIND_SERVICE.
//   - systemd/warren-proxy.service: proxy mode as a DynamicUser with no
//     capability, the config handed over as a credential.
//
// The tests (deploy_test.go) find every YAML and unit file under this
// directory, so that a new recipe is checked too: each must be a compose
// file, a Kubernetes manifest or a systemd service, and what the checks of
// its kind require of every warren in it holds whatever the file's name:
// the privileges that its mode needs and no more, a healthcheck or probes
// that run `warren healthcheck` against the API warren really serves, the
// WireGuard config mounted where warren reads it, the app without a way
// around warren. Every WARREN_ variable a recipe names must be one that
// `warren up -h` knows, and each warren's environment is handed to the
// real binary: `warren check` reads a config at the path the recipe gives
// it, and `warren up` starts and stops with the recipe's settings.
package deploy
