package deploy

// The recipes' tests. TestRecipes finds every YAML and unit file under
// deploy/ and checks it by its kind (compose, Kubernetes, systemd): each
// warren in it gets the privileges its mode needs and no more, a health
// check that reaches the API it serves, and its WireGuard config where it
// reads it; each app has no way out but warren. Then the real binary gets
// each warren's environment: `warren check` must accept a config at the path
// the recipe gives, and `warren up` must start with the recipe's settings
// (host mode in a network namespace of its own, as root) and answer the
// recipe's own health check.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// expected are the recipes that must be here, with what each must hold
// besides what every recipe of its kind must.
var expected = []struct {
	file string
	want func(s *summary) error
}{
	{"compose/host-mode.yaml", func(s *summary) error {
		if s.hostWarrens == 0 || s.namespaceApps == 0 {
			return errors.New("want a warren in host mode and an app in its network namespace (network_mode: service:warren)")
		}
		return nil
	}},
	{"compose/rootless.yaml", func(s *summary) error {
		if s.proxyWarrens == 0 || s.proxyApps == 0 || s.hostWarrens > 0 {
			return errors.New("want a warren in proxy mode (and none in host mode) and an app that uses its proxies")
		}
		return nil
	}},
	{"kubernetes/warren-sidecar.yaml", func(s *summary) error {
		if s.hostWarrens == 0 || s.namespaceApps == 0 {
			return errors.New("want warren in host mode as a sidecar of an app")
		}
		return nil
	}},
	{"systemd/warren-host.service", func(s *summary) error {
		if s.hostWarrens != 1 {
			return errors.New("want warren in host mode")
		}
		return nil
	}},
	{"systemd/warren-proxy.service", func(s *summary) error {
		if s.proxyWarrens != 1 {
			return errors.New("want warren in proxy mode")
		}
		return nil
	}},
}

// summary counts what a recipe holds, for expected.
type summary struct {
	hostWarrens, proxyWarrens int
	namespaceApps             int // apps in a host-mode warren's network namespace
	proxyApps                 int // apps that use a warren's proxies
}

const (
	// defaultConfig is where warren reads its config when given none.
	defaultConfig = "/etc/warren/wg0.conf"
	// imageUID is the user the image runs as unless told otherwise.
	imageUID = 65532
	// unknownContent marks a file that the user provides (a file on the
	// host): the tests write one of their own there.
	unknownContent = "\x00provided by the user"
)

func TestRecipes(t *testing.T) {
	bin := buildWarren(t)
	h := warrenHelp(t, bin)
	files := recipeFiles(t)

	t.Run("expected", func(t *testing.T) {
		doc, err := os.ReadFile("RECIPES.md")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range expected {
			if !slices.Contains(files, e.file) {
				t.Errorf("%s is missing", e.file)
			}
		}
		for _, f := range files {
			if !strings.Contains(string(doc), f) {
				t.Errorf("RECIPES.md does not explain %s", f)
			}
		}
	})

	t.Run("variables", func(t *testing.T) {
		// Every WARREN_ name in the recipes and their documentation.
		unknown := make(map[string][]string)
		for _, f := range append(slices.Clone(files), "RECIPES.md", "doc.go") {
			text, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range warrenVars(string(text)) {
				if !h.vars[name] && !slices.Contains(unknown[name], f) {
					unknown[name] = append(unknown[name], f)
				}
			}
		}
		for _, name := range sortedKeys(unknown) {
			t.Errorf("%s (in %s) is not a variable that `warren up -h` knows", name, strings.Join(unknown[name], ", "))
		}
	})

	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			text, err := os.ReadFile(filepath.FromSlash(f))
			if err != nil {
				t.Fatal(err)
			}
			checkNoKeys(t, f, string(text))
			var (
				ins []*instance
				s   summary
			)
			switch kind := recipeKind(f, text); kind {
			case "compose":
				ins, s = checkCompose(t, f, string(text), h)
			case "kubernetes":
				ins, s = checkKubernetes(t, f, string(text), h)
			case "systemd":
				ins, s = checkSystemd(t, f, string(text), h, bin)
			default:
				t.Fatalf("%s: %s", f, kind)
			}
			for _, e := range expected {
				if e.file == f {
					if err := e.want(&s); err != nil {
						t.Errorf("%s: %v", f, err)
					}
				}
			}
			if len(ins) == 0 {
				t.Errorf("%s: no warren in it", f)
			}
			for _, in := range ins {
				t.Run(in.name, func(t *testing.T) {
					t.Run("check", func(t *testing.T) { runCheck(t, bin, in) })
					t.Run("up", func(t *testing.T) { runUp(t, bin, in) })
				})
			}
		})
	}
}

// recipeFiles returns the recipes under deploy/, slash-separated and
// relative to it: every YAML and systemd unit file.
func recipeFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch path.Ext(d.Name()) {
		case ".yaml", ".yml", ".service", ".socket", ".timer", ".path", ".mount", ".target":
			files = append(files, filepath.ToSlash(p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// recipeKind tells what a recipe is: "compose", "kubernetes", "systemd",
// or else why it is none of them.
func recipeKind(file string, text []byte) string {
	switch path.Ext(file) {
	case ".service":
		return "systemd"
	case ".yaml", ".yml":
	default:
		return "a systemd unit of a kind these tests do not check yet: add checks for it"
	}
	var doc map[string]any
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return fmt.Sprintf("not YAML: %v", err)
	}
	switch {
	case doc["services"] != nil:
		return "compose"
	case doc["apiVersion"] != nil && doc["kind"] != nil:
		return "kubernetes"
	}
	return "neither a compose file (services:) nor a Kubernetes manifest (apiVersion:, kind:): add checks for it"
}

// keyRE matches what looks like a WireGuard key: 32 bytes in base64.
var keyRE = regexp.MustCompile(`[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=`)

// checkNoKeys fails if a recipe holds something that looks like a key: the
// recipes hold placeholders only.
func checkNoKeys(t *testing.T, file, text string) {
	t.Helper()
	for _, k := range keyRE.FindAllString(text, -1) {
		t.Errorf("%s holds what looks like a WireGuard key (%.6s…): recipes hold placeholders only", file, k)
	}
}

// ---- warren itself ----

// buildWarren builds warren once for the test.
func buildWarren(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "warren")
	// go test puts its own go first in PATH.
	cmd := exec.Command("go", "build", "-o", bin, "github.com/warren-vpn/warren/cmd/warren")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// help is what `warren up -h` says about its flags and variables.
type help struct {
	vars      map[string]bool   // every variable: one per flag, and those it names
	boolFlags map[string]bool   // flags that take no value
	aliases   map[string]string // short names: c for config
}

var (
	helpFlagRE = regexp.MustCompile(`^\s+-([a-z0-9][a-z0-9-]*)(?:\s+(\w+))?\s*$`)
	varRE      = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])(WARREN_[A-Z0-9_]*[A-Z0-9])`)
)

func warrenHelp(t *testing.T, bin string) *help {
	t.Helper()
	out, err := exec.Command(bin, "up", "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("warren up -h: %v\n%s", err, out)
	}
	h := &help{vars: make(map[string]bool), boolFlags: make(map[string]bool), aliases: make(map[string]string)}
	lines := strings.Split(string(out), "\n")
	for i, line := range lines {
		m := helpFlagRE.FindStringSubmatch(line)
		if m == nil || i+1 == len(lines) {
			continue
		}
		if long, ok := strings.CutPrefix(strings.TrimSpace(lines[i+1]), "short for --"); ok {
			h.aliases[m[1]] = long
			continue
		}
		h.vars[envName(m[1])] = true
		if m[2] == "" {
			h.boolFlags[m[1]] = true
		}
	}
	for _, name := range warrenVars(string(out)) {
		h.vars[name] = true
	}
	if !h.vars["WARREN_MODE"] || !h.boolFlags["lockdown"] || h.aliases["c"] != "config" {
		t.Fatalf("cannot read the flags in `warren up -h`:\n%s", out)
	}
	return h
}

// envName is the variable of a flag: --socks5-user is WARREN_SOCKS5_USER.
func envName(flag string) string {
	return "WARREN_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// warrenVars returns the WARREN_ names in text.
func warrenVars(text string) []string {
	var names []string
	for _, m := range varRE.FindAllStringSubmatch(text, -1) {
		names = append(names, m[1])
	}
	return names
}

// ---- one warren, whatever runs it ----

// instance is one warren that a recipe runs, as the shared checks and the
// runs of the real binary need it.
type instance struct {
	where string            // for messages: "compose/rootless.yaml: service warren"
	name  string            // for the subtest: "service warren"
	argv  []string          // what runs: warren up ...
	env   map[string]string // its environment
	uid   int               // the user it runs as
	// files are the files the recipe puts in warren's file system, by
	// path: their content, or unknownContent.
	files map[string]string
	// dirs are directories all of whose files the user provides.
	dirs []string
	// writable are the directories warren may create files in.
	writable []string
	// probes are the commands that ask whether warren is ready, each as
	// the recipe runs it beside warren (same user and environment).
	probes [][]string

	flags map[string][]string // parsed from argv[2:]
}

// parse checks argv and parses its flags.
func (in *instance) parse(t *testing.T, h *help) bool {
	t.Helper()
	if len(in.argv) < 2 || path.Base(in.argv[0]) != "warren" || in.argv[1] != "up" {
		t.Errorf("%s: runs %q, not warren up", in.where, in.argv)
		return false
	}
	flags, err := parseArgs(in.argv[2:], h)
	if err != nil {
		t.Errorf("%s: %v", in.where, err)
		return false
	}
	in.flags = flags
	return true
}

// parseArgs parses a warren command line's flags as package flag does.
func parseArgs(args []string, h *help) (map[string][]string, error) {
	flags := make(map[string][]string)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if long, ok := h.aliases[name]; ok {
			name = long
		}
		if !h.vars[envName(name)] {
			return nil, fmt.Errorf("warren up has no flag -%s", name)
		}
		if !hasVal {
			if h.boolFlags[name] {
				val = "true"
			} else {
				if i+1 == len(args) {
					return nil, fmt.Errorf("flag -%s needs a value", name)
				}
				i++
				val = args[i]
			}
		}
		flags[name] = append(flags[name], val)
	}
	return flags, nil
}

// setting returns the value of up's flag name as the instance sets it, on
// its command line or in its environment.
func (in *instance) setting(name string) (string, bool) {
	if v, ok := in.flags[name]; ok {
		return strings.Join(v, ","), true
	}
	v := in.env[envName(name)]
	return v, v != "" // warren ignores an empty variable
}

func (in *instance) on(name string) bool {
	v, _ := in.setting(name)
	b, _ := strconv.ParseBool(v)
	return b
}

func (in *instance) mode() string {
	if v, ok := in.setting("mode"); ok {
		return v
	}
	return "proxy"
}

// listener is one of warren's front-ends.
type listener struct{ name, addr string }

// listeners returns the front-ends the instance serves. In host mode they
// are off unless asked for.
func (in *instance) listeners() []listener {
	var ls []listener
	for _, l := range []listener{{"socks5", "127.0.0.1:1080"}, {"http", "off"}, {"dns", "127.0.0.1:5353"}} {
		v, set := in.setting(l.name)
		if !set {
			if in.mode() == "host" {
				continue
			}
			v = l.addr
		}
		if v != "off" {
			ls = append(ls, listener{l.name, v})
		}
	}
	return ls
}

func (in *instance) listener(name string) (listener, bool) {
	for _, l := range in.listeners() {
		if l.name == name {
			return l, true
		}
	}
	return listener{}, false
}

// lowPorts returns the listeners on ports below 1024, which need
// CAP_NET_BIND_SERVICE.
func (in *instance) lowPorts() []string {
	var low []string
	for _, l := range in.listeners() {
		_, port, err := net.SplitHostPort(l.addr)
		if n, _ := strconv.Atoi(port); err == nil && n < 1024 {
			low = append(low, l.name+" on "+l.addr)
		}
	}
	return low
}

// dnsOn53 returns the IP address warren's DNS server listens on, if it is
// on port 53 (where a resolver can be pointed at it).
func (in *instance) dnsOn53() (string, bool) {
	l, ok := in.listener("dns")
	if !ok {
		return "", false
	}
	host, port, err := net.SplitHostPort(l.addr)
	return host, err == nil && port == "53"
}

// configFiles returns the config files warren reads, and whether that is
// the default file because no other source is given.
func (in *instance) configFiles() ([]string, bool) {
	var files []string
	if v, ok := in.setting("config"); ok {
		files = strings.Split(v, ",")
	}
	if v := in.env["WARREN_WG_CONFIG_FILE"]; v != "" {
		files = append(files, v)
	}
	if len(files) == 0 && in.env["WARREN_WG_CONFIG"] == "" && in.env["WARREN_PRIVATE_KEY"] == "" && in.env["WARREN_PRIVATE_KEY_FILE"] == "" {
		return []string{defaultConfig}, true
	}
	return files, false
}

// secretFiles returns the files warren reads secrets from (passwords, a
// token, keys), by the variable or flag that names them.
func (in *instance) secretFiles() map[string]string {
	m := make(map[string]string)
	for name, v := range in.env {
		if strings.HasPrefix(name, "WARREN_") && strings.HasSuffix(name, "_FILE") && name != "WARREN_WG_CONFIG_FILE" && v != "" {
			m[name] = v
		}
	}
	for name, vs := range in.flags {
		if strings.HasSuffix(name, "-file") {
			m["--"+name] = vs[len(vs)-1]
		}
	}
	return m
}

// provides reports whether the recipe puts a file at p.
func (in *instance) provides(p string) bool {
	if _, ok := in.files[p]; ok {
		return true
	}
	return slices.ContainsFunc(in.dirs, func(d string) bool { return under(p, d) })
}

// canWrite reports whether warren may create files in dir.
func (in *instance) canWrite(dir string) bool {
	return slices.ContainsFunc(in.writable, func(w string) bool { return under(dir, w) })
}

// under reports whether p is dir or below it.
func under(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// apiAddrs returns the addresses of the API warren serves.
func (in *instance) apiAddrs() []string {
	if v, ok := in.setting("api"); ok {
		return strings.Split(v, ",")
	}
	return []string{"unix:" + defaultSocket(in.uid, in.env)}
}

// defaultSocket is control.DefaultSocketPath, for a user and environment.
func defaultSocket(uid int, env map[string]string) string {
	if uid == 0 {
		return "/run/warren/warren.sock"
	}
	if dir := env["XDG_RUNTIME_DIR"]; path.IsAbs(dir) {
		return path.Join(dir, "warren.sock")
	}
	return "/tmp/warren-" + strconv.Itoa(uid) + "/warren.sock"
}

// checkInstance holds what every warren must, whatever runs it: its
// config and secret files are there, its API can be served, and its probes
// reach it.
func checkInstance(t *testing.T, in *instance) {
	t.Helper()
	switch m := in.mode(); m {
	case "host", "proxy":
	default:
		t.Errorf("%s: mode %q is neither host nor proxy", in.where, m)
	}
	configs, isDefault := in.configFiles()
	for _, p := range configs {
		if !in.provides(p) {
			how := "its config"
			if isDefault {
				how = "its config (the default: no WARREN_CONFIG, WARREN_WG_CONFIG_FILE or -c is given)"
			}
			t.Errorf("%s: warren reads %s from %s, where the recipe puts no file", in.where, how, p)
		}
	}
	for name, p := range in.secretFiles() {
		if !in.provides(p) {
			t.Errorf("%s: %s is %s, where the recipe puts no file", in.where, name, p)
		}
	}
	if in.mode() == "host" {
		if _, ok := in.dnsOn53(); !ok {
			t.Errorf("%s: in host mode, DNS leaves only through the tunnel: serve warren's DNS on 127.0.0.1:53 (WARREN_DNS) and point the namespace's resolver at it", in.where)
		}
	}

	served := in.apiAddrs()
	for _, a := range served {
		p, ok := strings.CutPrefix(a, "unix:")
		if !ok {
			continue
		}
		if !in.canWrite(path.Dir(p)) {
			t.Errorf("%s: warren's API socket is %s, but it cannot create %s there (writable: %q)", in.where, p, path.Dir(p), in.writable)
		}
	}
	for _, probe := range in.probes {
		if len(probe) < 2 || path.Base(probe[0]) != "warren" || probe[1] != "healthcheck" {
			t.Errorf("%s: the probe %q is not `warren healthcheck`", in.where, probe)
			continue
		}
		// healthcheck's --api (or WARREN_API, taken whole) or the default.
		api := "unix:" + defaultSocket(in.uid, in.env)
		if v := in.env["WARREN_API"]; v != "" {
			api = v
		}
		for i, a := range probe {
			if v, ok := strings.CutPrefix(a, "--api="); ok {
				api = v
			} else if a == "--api" && i+1 < len(probe) {
				api = probe[i+1]
			}
		}
		if !slices.Contains(served, api) {
			t.Errorf("%s: the probe %q asks the API at %s, but warren serves %q", in.where, probe, api, served)
		}
		if strings.HasPrefix(api, "tcp:") && in.env["WARREN_API_TOKEN_FILE"] == "" && in.env["WARREN_API_TOKEN"] == "" {
			t.Errorf("%s: the probe asks a tcp: API, which needs the token", in.where)
		}
	}
}

// ---- running the real binary ----

// testConfig returns a valid wg-quick config with fresh keys.
func testConfig(t *testing.T) string {
	return fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.64.0.2/32, fd00:64::2/128
DNS = 10.64.0.1

[Peer]
PublicKey = %s
Endpoint = 192.0.2.1:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25
`, testKey(t), testKey(t))
}

func testKey(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// placeholders fill in a recipe's placeholder config.
var placeholders = map[string]func(t *testing.T) string{
	"REPLACE_ME_PRIVATE_KEY":     testKey,
	"REPLACE_ME_PEER_PUBLIC_KEY": testKey,
	"REPLACE_ME_ADDRESS":         func(*testing.T) string { return "10.64.0.2/32" },
	"REPLACE_ME_DNS_SERVER":      func(*testing.T) string { return "10.64.0.1" },
	"REPLACE_ME_ENDPOINT":        func(*testing.T) string { return "192.0.2.1:51820" },
}

var placeholderRE = regexp.MustCompile(`REPLACE_ME_[A-Z0-9_]+`)

// fillPlaceholders replaces the placeholders in text.
func fillPlaceholders(t *testing.T, where, text string) string {
	t.Helper()
	return placeholderRE.ReplaceAllStringFunc(text, func(p string) string {
		f, ok := placeholders[p]
		if !ok {
			t.Errorf("%s: unknown placeholder %s", where, p)
			return p
		}
		return f(t)
	})
}

// materialize writes the recipe's files under root: what the recipe holds
// as it is (placeholders filled in), and for a file the user provides a
// valid config if warren reads its config there, else a password.
func (in *instance) materialize(t *testing.T, root string) {
	t.Helper()
	configs, _ := in.configFiles()
	files := make(map[string]string)
	for p, content := range in.files {
		files[p] = content
	}
	for _, p := range configs {
		if _, ok := files[p]; !ok && in.provides(p) {
			files[p] = unknownContent
		}
	}
	for _, p := range in.secretFiles() {
		if _, ok := files[p]; !ok && in.provides(p) {
			files[p] = unknownContent
		}
	}
	for p, content := range files {
		switch {
		case content != unknownContent:
			content = fillPlaceholders(t, in.where, content)
		case slices.Contains(configs, p):
			content = testConfig(t)
		default:
			content = "t3st-s3cret\n"
		}
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// relocate moves the paths in v (a value or a comma-separated list) that
// name a file the recipe provides under root.
func (in *instance) relocate(root, v string) string {
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if path.IsAbs(p) && in.provides(p) {
			parts[i] = filepath.Join(root, filepath.FromSlash(p))
		}
	}
	return strings.Join(parts, ",")
}

// environ returns the instance's environment with its files under root.
func (in *instance) environ(root string, override map[string]string) []string {
	env := make(map[string]string)
	for k, v := range in.env {
		env[k] = in.relocate(root, v)
	}
	for k, v := range override {
		env[k] = v
	}
	var list []string
	for _, k := range sortedKeys(env) {
		list = append(list, k+"="+env[k])
	}
	return list
}

// runCheck runs `warren check` with the recipe's environment against the
// files the recipe puts where it puts them (moved under a temporary
// directory): a recipe that points warren elsewhere fails.
func runCheck(t *testing.T, bin string, in *instance) {
	root := t.TempDir()
	in.materialize(t, root)
	args := []string{"check"}
	configs, isDefault := in.configFiles()
	if isDefault || in.flags["config"] != nil {
		// warren check does not see up's command line, and the default
		// file is the real /etc/warren/wg0.conf: name it.
		for _, p := range configs {
			args = append(args, "-c", in.relocate(root, p))
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = in.environ(root, nil)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "valid") {
		t.Errorf("%s: warren %s with the recipe's environment: %v\n%s", in.where, strings.Join(args, " "), err, out)
	}
}

// runUp starts `warren up` with the recipe's settings (disconnected, its
// API on a socket of the test's), runs the recipe's probes against it,
// which must reach it and hear that it is not ready, and stops it, which
// must end it cleanly. Proxy mode listens on free loopback ports instead of
// the recipe's; host mode runs as the recipe says, in a network namespace
// of its own, which needs root.
func runUp(t *testing.T, bin string, in *instance) {
	host := in.mode() == "host"
	if host {
		if os.Geteuid() != 0 {
			t.Skip("host mode: needs root, to run warren in a network namespace of its own")
		}
		for _, tool := range []string{"unshare", "ip"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("host mode: needs %s, to run warren in a network namespace of its own", tool)
			}
		}
	}
	root := t.TempDir()
	in.materialize(t, root)
	// A short path: a unix socket's path has at most 107 bytes.
	sockDir, err := os.MkdirTemp("", "wd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	api := "unix:" + filepath.Join(sockDir, "api.sock")
	override := map[string]string{"WARREN_API": api, "WARREN_NO_CONNECT": "true", "PATH": os.Getenv("PATH")}
	if host {
		if in.on("manage-resolv-conf") {
			rc := filepath.Join(root, "resolv.conf")
			if err := os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			override["WARREN_RESOLV_CONF"] = rc
		}
	} else {
		for _, l := range in.listeners() {
			override[envName(l.name)] = "127.0.0.1:0"
		}
	}
	args := []string{"up"}
	if configs, isDefault := in.configFiles(); isDefault {
		// The default file is the real /etc/warren/wg0.conf: name it.
		args = append(args, "--config="+in.relocate(root, configs[0]))
	}
	for name, vs := range in.flags {
		if _, ok := override[envName(name)]; ok {
			continue // the variable takes its place
		}
		for _, v := range vs {
			args = append(args, "--"+name+"="+in.relocate(root, v))
		}
	}

	var cmd *exec.Cmd
	if host {
		// unshare execs sh, which execs warren: one process, which the
		// signal below reaches.
		cmd = exec.Command("unshare", append([]string{"--net", "--", "sh", "-c", `ip link set lo up && exec "$0" "$@"`, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	env := in.environ(root, override)
	cmd.Env = env
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-done
		}
	}()

	// Wait for its API.
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := exec.Command(bin, "status", "--api", api).Run()
		if err == nil {
			break
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("%s: warren up with the recipe's settings exited: %v\n%s", in.where, err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: warren up with the recipe's settings: no API after 15 s\n%s", in.where, out.String())
		}
	}

	for _, probe := range in.probes {
		pargs := slices.Clone(probe[1:])
		for i, a := range pargs {
			if slices.Contains(in.apiAddrs(), a) {
				pargs[i] = api
			}
		}
		pc := exec.Command(bin, pargs...)
		pc.Env = env
		pout, err := pc.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(pout), "disconnected") {
			t.Errorf("%s: the probe %q against a disconnected warren: %v, %q; want exit status 1 and the state", in.where, probe, err, pout)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("%s: warren up did not stop cleanly: %v\n%s", in.where, err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Errorf("%s: warren up did not stop within 20 s of SIGTERM\n%s", in.where, out.String())
	}
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ---- YAML helpers ----

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
func asList(v any) []any         { l, _ := v.([]any); return l }

// scalar returns a scalar as a string ("" for nil).
func scalar(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// strList returns a string or a list of scalars as a list.
func strList(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []string:
		return v
	}
	var l []string
	for _, e := range asList(v) {
		l = append(l, scalar(e))
	}
	return l
}

// ---- compose ----

// composeWarren is a warren service of a compose file.
type composeWarren struct {
	svc  map[string]any
	in   *instance
	nets []string
	// secretVars maps the paths of the secrets it gets from the
	// environment to the variable that holds them.
	secretVars map[string]string
}

var interpolationRE = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate does what compose does to ${VAR} (as if every variable were
// set, to testValue) and $$.
func interpolate(text string) string {
	return interpolationRE.ReplaceAllStringFunc(text, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := interpolationRE.FindStringSubmatch(m)
		return testValue(sub[1] + sub[2])
	})
}

// testValue is the value the tests give a compose variable.
func testValue(name string) string {
	return "t3st" + strings.ToLower(strings.ReplaceAll(name, "_", ""))
}

// isWarrenImage reports whether image is warren's: its name, less
// registry and tag, is warren.
func isWarrenImage(image string) bool {
	image, _, _ = strings.Cut(image, "@")
	name := path.Base(image)
	name, _, _ = strings.Cut(name, ":")
	return name == "warren"
}

// composeUID is the user a compose service runs as.
func composeUID(t *testing.T, where string, user any) int {
	u, _, _ := strings.Cut(scalar(user), ":")
	switch u {
	case "":
		return imageUID
	case "root":
		return 0
	case "warren":
		return imageUID
	}
	n, err := strconv.Atoi(u)
	if err != nil {
		t.Errorf("%s: user %q: give the uid", where, u)
	}
	return n
}

// composeEnv returns a service's environment.
func composeEnv(t *testing.T, where string, v any) map[string]string {
	env := make(map[string]string)
	if m := asMap(v); m != nil {
		for k, val := range m {
			switch val := val.(type) {
			case string:
				env[k] = val
			case nil:
				t.Errorf("%s: %s has no value (compose would take it from the shell)", where, k)
			case bool:
				t.Errorf("%s: %s: %v is a YAML boolean: quote it", where, k, val)
			default:
				env[k] = fmt.Sprint(val)
			}
		}
		return env
	}
	for _, e := range asList(v) {
		k, val, ok := strings.Cut(scalar(e), "=")
		if !ok {
			t.Errorf("%s: %s has no value (compose would take it from the shell)", where, k)
		}
		env[k] = val
	}
	return env
}

// composeSysctls returns a service's sysctls as NAME=VALUE.
func composeSysctls(v any) []string {
	if m := asMap(v); m != nil {
		var l []string
		for _, k := range sortedKeys(m) {
			l = append(l, k+"="+scalar(m[k]))
		}
		return l
	}
	return strList(v)
}

// composeNets returns the networks a service is on, "default" if none is
// named.
func composeNets(svc map[string]any) []string {
	if svc["network_mode"] != nil {
		return nil
	}
	var nets []string
	if m := asMap(svc["networks"]); m != nil {
		nets = sortedKeys(m)
	} else {
		nets = strList(svc["networks"])
	}
	if len(nets) == 0 {
		nets = []string{"default"}
	}
	return nets
}

// dependsHealthy reports whether svc waits for dep to be healthy.
func dependsHealthy(svc map[string]any, dep string) bool {
	d := asMap(asMap(svc["depends_on"])[dep])
	return scalar(d["condition"]) == "service_healthy"
}

// caps returns a list of capabilities, upper case without CAP_.
func caps(v any) []string {
	var l []string
	for _, c := range strList(v) {
		l = append(l, strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
	}
	return l
}

// checkCaps checks the capabilities a host-mode warren adds: NET_ADMIN,
// and NET_BIND_SERVICE if and only if it listens on a port below 1024.
func checkCaps(t *testing.T, in *instance, drop, add []string) {
	t.Helper()
	if !slices.Contains(drop, "ALL") {
		t.Errorf("%s: drop ALL capabilities, and add back only those warren needs", in.where)
	}
	want := []string{"NET_ADMIN"}
	if low := in.lowPorts(); len(low) > 0 {
		want = append(want, "NET_BIND_SERVICE")
	}
	got := slices.Clone(add)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: adds capabilities %q, want %q (NET_BIND_SERVICE only for a port below 1024: %q)", in.where, add, want, in.lowPorts())
	}
}

// checkBootstrapDNS checks that a host-mode warren whose namespace has no
// resolver it can use before the tunnel is up names servers that find the
// endpoint (IP addresses, outside the namespace).
func checkBootstrapDNS(t *testing.T, in *instance, why string) {
	t.Helper()
	v, ok := in.setting("bootstrap-dns")
	if !ok {
		t.Errorf("%s: %s: give WARREN_BOOTSTRAP_DNS, or an Endpoint host name cannot be resolved before the tunnel is up", in.where, why)
		return
	}
	for _, s := range strings.Split(v, ",") {
		host := strings.TrimSpace(s)
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if ip := net.ParseIP(host); ip == nil || ip.IsLoopback() {
			t.Errorf("%s: WARREN_BOOTSTRAP_DNS: %q is not the IP address of a server outside the namespace", in.where, s)
		}
	}
}

// dangerousCaps are capabilities with which an app could undo warren's
// kill switch or go around it.
var dangerousCaps = []string{"ALL", "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_MODULE", "BPF"}

func checkCompose(t *testing.T, file, text string, h *help) ([]*instance, summary) {
	var s summary
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(interpolate(text)), &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(repo, "go.mod")); err != nil {
		t.Fatalf("the repository is not at %s: %v", repo, err)
	}
	services := asMap(doc["services"])
	topSecrets := asMap(doc["secrets"])
	internal := make(map[string]bool)
	for name, n := range asMap(doc["networks"]) {
		internal[name] = asMap(n)["internal"] == true
	}
	exits := func(nets []string) bool {
		return slices.ContainsFunc(nets, func(n string) bool { return !internal[n] })
	}

	warrens := make(map[string]*composeWarren)
	var ins []*instance
	for _, name := range sortedKeys(services) {
		svc := asMap(services[name])
		where := file + ": service " + name
		env := composeEnv(t, where, svc["environment"])
		if svc["env_file"] != nil && isWarrenImage(scalar(svc["image"])) {
			t.Errorf("%s: env_file cannot be checked: put warren's variables in environment", where)
		}
		if !isWarrenImage(scalar(svc["image"])) {
			continue
		}
		w := &composeWarren{svc: svc, nets: composeNets(svc), secretVars: make(map[string]string)}
		warrens[name] = w
		in := &instance{where: where, name: "service " + name, env: env, uid: composeUID(t, where, svc["user"]), files: make(map[string]string)}
		w.in = in

		// The image: built from the repository's Dockerfile.
		b := svc["build"]
		ctx, dockerfile := scalar(b), "Dockerfile"
		if m := asMap(b); m != nil {
			ctx = scalar(m["context"])
			if d := scalar(m["dockerfile"]); d != "" {
				dockerfile = d
			}
		}
		built, err := filepath.Abs(filepath.Join(filepath.Dir(filepath.FromSlash(file)), filepath.FromSlash(ctx), filepath.FromSlash(dockerfile)))
		if err != nil || b == nil || built != filepath.Join(repo, "Dockerfile") {
			t.Errorf("%s: build: want the repository's Dockerfile (context ../.., dockerfile Dockerfile), not %s", where, built)
		}

		// What it runs.
		entry := strList(svc["entrypoint"])
		if entry == nil {
			entry = []string{"warren"}
		}
		cmd := strList(svc["command"])
		if s, ok := svc["command"].(string); ok {
			if cmd, err = splitWords(s); err != nil {
				t.Errorf("%s: command: %v", where, err)
			}
		}
		if cmd == nil {
			cmd = []string{"up"}
		}
		in.argv = append(slices.Clone(entry), cmd...)
		if !in.parse(t, h) {
			continue
		}

		// Its files: secrets and bind mounts.
		for _, sec := range asList(svc["secrets"]) {
			src, target := scalar(sec), ""
			if m := asMap(sec); m != nil {
				src, target = scalar(m["source"]), scalar(m["target"])
			}
			if target == "" {
				target = src
			}
			if !path.IsAbs(target) {
				target = "/run/secrets/" + target
			}
			top, ok := topSecrets[src]
			if !ok {
				t.Errorf("%s: secret %s is not defined under secrets:", where, src)
				continue
			}
			content := unknownContent
			if v := scalar(asMap(top)["environment"]); v != "" {
				content = testValue(v)
				w.secretVars[target] = v
			}
			in.files[target] = content
		}
		writableRoot := svc["read_only"] != true
		for _, v := range asList(svc["volumes"]) {
			typ, src, target := "", "", ""
			if m := asMap(v); m != nil {
				typ, target = scalar(m["type"]), scalar(m["target"])
			} else {
				// [SOURCE:]TARGET[:MODE]
				parts := strings.Split(scalar(v), ":")
				target, typ = parts[0], "volume"
				if len(parts) > 1 {
					src, target = parts[0], parts[1]
				}
				if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") || strings.HasPrefix(src, "~") {
					typ = "bind"
				}
			}
			switch typ {
			case "bind":
				in.dirs = append(in.dirs, target)
			default:
				in.writable = append(in.writable, target)
			}
		}
		for _, tmp := range strList(svc["tmpfs"]) {
			p, _, _ := strings.Cut(tmp, ":")
			in.writable = append(in.writable, p)
		}
		if writableRoot {
			// The image's /tmp is 1777; everything else is root's.
			in.writable = append(in.writable, "/tmp")
			if in.uid == 0 {
				in.writable = append(in.writable, "/")
			}
		}

		// Its health check: the image's command, with a start period.
		hc := asMap(svc["healthcheck"])
		test := strList(hc["test"])
		switch {
		case hc == nil || hc["disable"] == true:
			t.Errorf("%s: no healthcheck: want test [CMD, warren, healthcheck] with a start_period", where)
		case len(test) == 0 || test[0] != "CMD":
			t.Errorf("%s: healthcheck test %q: the image has no shell, want [CMD, warren, healthcheck]", where, test)
		default:
			in.probes = append(in.probes, test[1:])
			if d, err := time.ParseDuration(scalar(hc["start_period"])); err != nil || d <= 0 {
				t.Errorf("%s: healthcheck: want a start_period (connecting takes a while)", where)
			}
		}

		// Privileges, by mode.
		nnp := slices.ContainsFunc(strList(svc["security_opt"]), func(o string) bool {
			return o == "no-new-privileges:true" || o == "no-new-privileges"
		})
		if !nnp {
			t.Errorf("%s: want security_opt no-new-privileges:true", where)
		}
		if svc["privileged"] == true {
			t.Errorf("%s: privileged", where)
		}
		nm := scalar(svc["network_mode"])
		switch in.mode() {
		case "host":
			s.hostWarrens++
			if in.uid != 0 {
				t.Errorf("%s: host mode runs as user \"0:0\": Docker gives cap_add's capabilities to root only", where)
			}
			checkCaps(t, in, caps(svc["cap_drop"]), caps(svc["cap_add"]))
			tun := slices.ContainsFunc(asList(svc["devices"]), func(d any) bool {
				if m := asMap(d); m != nil {
					return scalar(m["source"]) == "/dev/net/tun" && scalar(m["target"]) == "/dev/net/tun"
				}
				parts := strings.Split(scalar(d), ":")
				return parts[0] == "/dev/net/tun" && (len(parts) == 1 || parts[1] == "/dev/net/tun")
			})
			if !tun {
				t.Errorf("%s: host mode needs devices: [/dev/net/tun:/dev/net/tun]", where)
			}
			if !slices.Contains(composeSysctls(svc["sysctls"]), "net.ipv6.conf.all.disable_ipv6=0") {
				t.Errorf("%s: want sysctls net.ipv6.conf.all.disable_ipv6: 0: Docker turns IPv6 off in containers on IPv4 networks, and a config with an IPv6 Address then fails", where)
			}
			if nm == "host" || nm == "none" || strings.HasPrefix(nm, "service:") || strings.HasPrefix(nm, "container:") {
				t.Errorf("%s: network_mode %s: warren in host mode wants a namespace of its own, with a way out", where, nm)
			}
			ip, ok := in.dnsOn53()
			dns := strList(svc["dns"])
			if ok && !slices.Equal(dns, []string{ip}) {
				t.Errorf("%s: warren's DNS is on %s:53, but dns is %q: want [%s], so that the namespace's lookups go to warren", where, ip, dns, ip)
			}
			// The namespace's resolver is Docker's, which asks from
			// inside the namespace: closed while warren connects.
			checkBootstrapDNS(t, in, "the container's resolver is Docker's 127.0.0.11, which forwards from inside the namespace")
		case "proxy":
			s.proxyWarrens++
			if in.uid == 0 {
				t.Errorf("%s: proxy mode needs no privileges: run as the image's user, not root", where)
			}
			if !slices.Contains(caps(svc["cap_drop"]), "ALL") || len(caps(svc["cap_add"])) > 0 {
				t.Errorf("%s: proxy mode needs no capabilities: cap_drop [ALL] and no cap_add", where)
			}
			if svc["devices"] != nil {
				t.Errorf("%s: proxy mode needs no devices", where)
			}
			if svc["read_only"] != true {
				t.Errorf("%s: want read_only: true", where)
			}
			if nm != "" {
				t.Errorf("%s: network_mode %s: proxy mode serves other containers over networks", where, nm)
			}
		}
		if nm == "" && !exits(w.nets) {
			t.Errorf("%s: on networks %q, all internal: warren has no way to its endpoint", where, w.nets)
		}
		checkInstance(t, in)
		ins = append(ins, in)
	}

	// The apps: none has a way out but warren.
	for _, name := range sortedKeys(services) {
		if _, ok := warrens[name]; ok {
			continue
		}
		svc := asMap(services[name])
		where := file + ": service " + name
		if svc["privileged"] == true || slices.ContainsFunc(caps(svc["cap_add"]), func(c string) bool { return slices.Contains(dangerousCaps, c) }) {
			t.Errorf("%s: privileged, or capabilities %q: it could undo warren's kill switch or go around it", where, caps(svc["cap_add"]))
		}
		env := composeEnv(t, where, svc["environment"])
		if dep, ok := strings.CutPrefix(scalar(svc["network_mode"]), "service:"); ok {
			w := warrens[dep]
			switch {
			case w == nil:
				t.Errorf("%s: network_mode service:%s: not a warren of this file", where, dep)
				continue
			case w.in.mode() != "host":
				t.Errorf("%s: shares the namespace of %s, which is in proxy mode and closes nothing", where, dep)
			}
			s.namespaceApps++
			if !dependsHealthy(svc, dep) {
				t.Errorf("%s: want depends_on: {%s: {condition: service_healthy}}, so that it starts once the tunnel is up", where, dep)
			}
			for _, k := range []string{"ports", "dns", "dns_search", "networks", "hostname", "extra_hosts", "mac_address", "expose"} {
				if svc[k] != nil {
					t.Errorf("%s: %s conflicts with network_mode service:%s (set it on %s)", where, k, dep, dep)
				}
			}
			continue
		}
		var proxies []string
		for _, k := range sortedKeys(env) {
			switch strings.ToUpper(k) {
			case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY":
				proxies = append(proxies, k)
			}
		}
		if len(proxies) == 0 {
			continue
		}
		s.proxyApps++
		nets := composeNets(svc)
		if svc["network_mode"] != nil || exits(nets) {
			t.Errorf("%s: uses warren's proxies but is on networks %q (network_mode %v): it must be on internal networks only, so that warren is its only way out", where, nets, svc["network_mode"])
		}
		for _, k := range proxies {
			checkProxyURL(t, where+": "+k, env[k], svc, nets, warrens)
		}
	}
	return ins, s
}

// checkProxyURL checks a proxy variable of an app: it names a warren on a
// network the app is on, a listener of it that other containers can reach,
// with the credentials it wants.
func checkProxyURL(t *testing.T, where, v string, svc map[string]any, nets []string, warrens map[string]*composeWarren) {
	t.Helper()
	u, err := url.Parse(v)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	w := warrens[u.Hostname()]
	if w == nil {
		t.Errorf("%s: %s is not a warren of this file", where, u.Host)
		return
	}
	if !slices.ContainsFunc(nets, func(n string) bool { return slices.Contains(w.nets, n) }) {
		t.Errorf("%s: shares no network with %s", where, u.Hostname())
	}
	if !dependsHealthy(svc, u.Hostname()) {
		t.Errorf("%s: want depends_on: {%s: {condition: service_healthy}}", where, u.Hostname())
	}
	var kind string
	switch u.Scheme {
	case "http":
		kind = "http"
	case "socks5h":
		kind = "socks5"
	case "socks5", "socks4", "socks4a":
		t.Errorf("%s: %s resolves names in the app, not through the tunnel: use socks5h", where, u.Scheme)
		return
	default:
		t.Errorf("%s: scheme %s: warren serves http and socks5h", where, u.Scheme)
		return
	}
	l, ok := w.in.listener(kind)
	if !ok {
		t.Errorf("%s: %s's %s proxy is off", where, u.Hostname(), kind)
		return
	}
	host, port, err := net.SplitHostPort(l.addr)
	if err != nil {
		t.Errorf("%s: %s listens on %q: %v", where, kind, l.addr, err)
		return
	}
	if u.Port() != port {
		t.Errorf("%s: port %q, but warren's %s proxy listens on %s", where, u.Port(), kind, l.addr)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("%s: warren's %s proxy listens on %s, which other containers cannot reach", where, kind, l.addr)
	}
	user, ok := w.in.setting(kind + "-user")
	if !ok {
		t.Errorf("%s: warren's %s proxy wants no user name: any container on the network may use the tunnel", where, kind)
		return
	}
	pass, hasPass := u.User.Password()
	if u.User.Username() != user || !hasPass || pass == "" {
		t.Errorf("%s: want user %s and a password in the URL", where, user)
	}
	if file, ok := w.in.setting(kind + "-password-file"); ok {
		if v, ok := w.secretVars[file]; ok && pass != testValue(v) {
			t.Errorf("%s: the password is not ${%s}, which warren's %s password file holds", where, v, kind)
		}
	}
}

// ---- Kubernetes ----

func checkKubernetes(t *testing.T, file, text string, h *help) ([]*instance, summary) {
	var s summary
	var docs []map[string]any
	dec := yaml.NewDecoder(strings.NewReader(text))
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	secrets := make(map[string]map[string]string)
	for _, d := range docs {
		name := scalar(asMap(d["metadata"])["name"])
		if d["apiVersion"] == nil || d["kind"] == nil || name == "" {
			t.Errorf("%s: a document has no apiVersion, kind or metadata.name", file)
		}
		if d["kind"] != "Secret" && d["kind"] != "ConfigMap" {
			continue
		}
		data := make(map[string]string)
		for k, v := range asMap(d["data"]) {
			if d["kind"] == "ConfigMap" {
				data[k] = scalar(v)
				continue
			}
			b, err := base64.StdEncoding.DecodeString(scalar(v))
			if err != nil {
				t.Errorf("%s: Secret %s: data %s: %v", file, name, k, err)
			}
			data[k] = string(b)
		}
		for k, v := range asMap(d["stringData"]) {
			data[k] = scalar(v)
		}
		secrets[scalar(d["kind"])+"/"+name] = data
	}

	var ins []*instance
	for _, d := range docs {
		kind, name := scalar(d["kind"]), scalar(asMap(d["metadata"])["name"])
		spec := asMap(d["spec"])
		var pod map[string]any
		switch kind {
		case "Pod":
			pod = spec
		case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job":
			tmpl := asMap(spec["template"])
			pod = asMap(tmpl["spec"])
			if kind != "Job" {
				labels := asMap(asMap(tmpl["metadata"])["labels"])
				for k, v := range asMap(asMap(spec["selector"])["matchLabels"]) {
					if labels[k] != v {
						t.Errorf("%s: %s %s: the selector's %s=%v does not match the pod template's labels", file, kind, name, k, v)
					}
				}
			}
		case "CronJob":
			pod = asMap(asMap(asMap(asMap(spec["jobTemplate"])["spec"])["template"])["spec"])
		default:
			continue
		}
		pins, ps := checkPod(t, file+": "+kind+" "+name, pod, secrets, h)
		ins = append(ins, pins...)
		s.hostWarrens += ps.hostWarrens
		s.proxyWarrens += ps.proxyWarrens
		s.namespaceApps += ps.namespaceApps
	}
	return ins, s
}

// checkPod checks a pod spec (where is "FILE: KIND NAME") with warren in
// it, given the Secrets and ConfigMaps of its file by "KIND/NAME".
func checkPod(t *testing.T, where string, pod map[string]any, secrets map[string]map[string]string, h *help) ([]*instance, summary) {
	var s summary
	if pod["hostNetwork"] == true {
		t.Errorf("%s: hostNetwork: warren would take over the node's network", where)
	}
	volumes := make(map[string]map[string]any)
	for _, v := range asList(pod["volumes"]) {
		volumes[scalar(asMap(v)["name"])] = asMap(v)
	}
	podSC := asMap(pod["securityContext"])
	inits, ctrs := asList(pod["initContainers"]), asList(pod["containers"])
	var ins []*instance
	apps := 0
	for i, c := range append(slices.Clone(inits), ctrs...) {
		c := asMap(c)
		cwhere := where + ": container " + scalar(c["name"])
		sc := asMap(c["securityContext"])
		capsOf := func(k string) []string { return caps(asMap(sc["capabilities"])[k]) }
		if !isWarrenImage(scalar(c["image"])) {
			apps++
			if sc["privileged"] == true || slices.ContainsFunc(capsOf("add"), func(c string) bool { return slices.Contains(dangerousCaps, c) }) {
				t.Errorf("%s: privileged, or capabilities %q: it could undo warren's kill switch", cwhere, capsOf("add"))
			}
			continue
		}
		if i != 0 || scalar(c["restartPolicy"]) != "Always" {
			t.Errorf("%s: want warren as the first initContainer, with restartPolicy: Always (a native sidecar): the app starts once its startupProbe passes, and nothing runs before it", cwhere)
		}

		env := make(map[string]string)
		for _, e := range asList(c["env"]) {
			e := asMap(e)
			k := scalar(e["name"])
			switch v := e["value"].(type) {
			case string:
				env[k] = v
			case nil:
				if ref := asMap(asMap(e["valueFrom"])["secretKeyRef"]); ref != nil {
					env[k] = secrets["Secret/"+scalar(ref["name"])][scalar(ref["key"])]
				}
			default:
				t.Errorf("%s: env %s: %v is not a string: quote it", cwhere, k, v)
			}
		}
		uid := imageUID
		for _, m := range []map[string]any{podSC, sc} {
			if n, ok := m["runAsUser"].(int); ok {
				uid = n
			}
		}
		in := &instance{where: cwhere, name: strings.SplitN(cwhere, ": ", 2)[1], env: env, uid: uid, files: make(map[string]string)}
		cmd, args := strList(c["command"]), strList(c["args"])
		switch {
		case cmd != nil:
			in.argv = append(cmd, args...)
		case args != nil:
			in.argv = append([]string{"warren"}, args...)
		default:
			in.argv = []string{"warren", "up"}
		}
		if !in.parse(t, h) {
			continue
		}

		// Mounts: the config, the TUN, somewhere to write.
		tun := false
		for _, m := range asList(c["volumeMounts"]) {
			m := asMap(m)
			mp, sub := scalar(m["mountPath"]), scalar(m["subPath"])
			vol := volumes[scalar(m["name"])]
			if vol == nil {
				t.Errorf("%s: mounts volume %v, which the pod does not have", cwhere, m["name"])
				continue
			}
			switch {
			case vol["secret"] != nil || vol["configMap"] != nil:
				src, kind, nameKey := asMap(vol["secret"]), "Secret", "secretName"
				if src == nil {
					src, kind, nameKey = asMap(vol["configMap"]), "ConfigMap", "name"
				}
				data, ok := secrets[kind+"/"+scalar(src[nameKey])]
				if !ok {
					t.Errorf("%s: volume %v: no %s %v in this file", cwhere, vol["name"], kind, src[nameKey])
					continue
				}
				if src["optional"] == true {
					t.Errorf("%s: volume %v is optional: warren would start without its config", cwhere, vol["name"])
				}
				mode := 0o644
				if n, ok := src["defaultMode"].(int); ok {
					mode = n
				}
				files := make(map[string]string) // path in the volume -> content
				if items := asList(src["items"]); items != nil {
					for _, it := range items {
						it := asMap(it)
						content, ok := data[scalar(it["key"])]
						if !ok {
							t.Errorf("%s: volume %v: %s %v has no key %v", cwhere, vol["name"], kind, src[nameKey], it["key"])
						}
						files[scalar(it["path"])] = content
						if n, ok := it["mode"].(int); ok && kind == "Secret" && n&0o077 != 0 {
							t.Errorf("%s: volume %v: item %v has mode %#o: others may read it", cwhere, vol["name"], it["key"], n)
						}
					}
				} else {
					for k, v := range data {
						files[k] = v
					}
				}
				if kind == "Secret" && mode&0o077 != 0 {
					t.Errorf("%s: volume %v: defaultMode %#o lets others read the secret: want 0400", cwhere, vol["name"], mode)
				}
				for p, content := range files {
					switch {
					case sub == "":
						in.files[path.Join(mp, p)] = content
					case sub == p:
						in.files[mp] = content
					}
				}
			case vol["hostPath"] != nil:
				hp := asMap(vol["hostPath"])
				if mp == "/dev/net/tun" {
					tun = scalar(hp["path"]) == "/dev/net/tun" && scalar(hp["type"]) == "CharDevice"
					if !tun {
						t.Errorf("%s: /dev/net/tun: want a hostPath volume of path /dev/net/tun, type CharDevice", cwhere)
					}
				}
			case vol["emptyDir"] != nil:
				in.writable = append(in.writable, mp)
			}
		}

		// Privileges, by mode.
		if sc["privileged"] == true {
			t.Errorf("%s: privileged", cwhere)
		}
		if sc["allowPrivilegeEscalation"] != false {
			t.Errorf("%s: want allowPrivilegeEscalation: false", cwhere)
		}
		if sc["readOnlyRootFilesystem"] != true {
			t.Errorf("%s: want readOnlyRootFilesystem: true", cwhere)
			in.writable = append(in.writable, "/tmp")
			if uid == 0 {
				in.writable = append(in.writable, "/")
			}
		}
		switch in.mode() {
		case "host":
			s.hostWarrens++
			if uid != 0 {
				t.Errorf("%s: host mode runs as root (runAsUser: 0): capabilities reach root only", cwhere)
			}
			checkCaps(t, in, capsOf("drop"), capsOf("add"))
			if !tun {
				t.Errorf("%s: host mode needs /dev/net/tun mounted from a hostPath volume (type CharDevice)", cwhere)
			}
			ip, ok := in.dnsOn53()
			ns := strList(asMap(pod["dnsConfig"])["nameservers"])
			if ok && (scalar(pod["dnsPolicy"]) != "None" || !slices.Equal(ns, []string{ip})) {
				t.Errorf("%s: warren's DNS is on %s:53, but the pod's dnsPolicy is %v with nameservers %q: want None and [%s]", cwhere, ip, pod["dnsPolicy"], ns, ip)
			}
			if scalar(pod["dnsPolicy"]) != "None" || slices.Equal(ns, []string{ip}) {
				checkBootstrapDNS(t, in, "the pod's resolver is warren itself (or the cluster's, which the kill switch closes)")
			}
		case "proxy":
			s.proxyWarrens++
			if uid == 0 || len(capsOf("add")) > 0 || !slices.Contains(capsOf("drop"), "ALL") {
				t.Errorf("%s: proxy mode needs no privileges: not root, drop ALL capabilities, add none", cwhere)
			}
		}

		// Probes: startup and readiness ask /readyz; no liveness.
		for _, p := range []string{"startupProbe", "readinessProbe"} {
			probe := asMap(c[p])
			command := strList(asMap(probe["exec"])["command"])
			if command == nil {
				t.Errorf("%s: want a %s that runs exec: [warren, healthcheck] (the API wants a token on TCP, and the image has no shell)", cwhere, p)
				continue
			}
			in.probes = append(in.probes, command)
		}
		if c["livenessProbe"] != nil {
			t.Errorf("%s: no livenessProbe: a restart stops warren cleanly, which removes its kill switch while the app runs on", cwhere)
		}
		checkInstance(t, in)
		ins = append(ins, in)
	}
	for _, in := range ins {
		if in.mode() == "host" {
			s.namespaceApps += apps
		}
	}
	return ins, s
}

// ---- systemd ----

// unit is a parsed systemd unit file.
type unit struct {
	name     string
	sections map[string][]unitEntry
}

type unitEntry struct {
	key, value string
	line       int
}

// parseUnit parses a unit file: [Section] headers, Key=Value lines,
// comments (# and ;) and lines continued with a backslash.
func parseUnit(name, text string) (*unit, error) {
	u := &unit{name: name, sections: make(map[string][]unitEntry)}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		line := strings.TrimSpace(lines[i])
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: %q", n, line)
			}
			section = line[1 : len(line)-1]
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(lines[i])
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is not Key=Value in a section", n, line)
		}
		u.sections[section] = append(u.sections[section], unitEntry{strings.TrimSpace(k), strings.TrimSpace(v), n})
	}
	return u, nil
}

// values returns every value of a key, in order.
func (u *unit) values(section, key string) []string {
	var vs []string
	for _, e := range u.sections[section] {
		if e.key == key {
			vs = append(vs, e.value)
		}
	}
	return vs
}

// last returns the value that counts for a key that takes one.
func (u *unit) last(section, key string) (string, bool) {
	vs := u.values(section, key)
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// list returns a list setting's items (an empty assignment empties it) and
// whether it is set at all.
func (u *unit) list(section, key string) ([]string, bool) {
	vs := u.values(section, key)
	var items []string
	for _, v := range vs {
		if v == "" {
			items = nil
			continue
		}
		items = append(items, strings.Fields(v)...)
	}
	return items, len(vs) > 0
}

func (u *unit) yes(key string) bool {
	v, _ := u.last("Service", key)
	switch strings.ToLower(v) {
	case "yes", "true", "on", "1":
		return true
	}
	return false
}

// specifiers expands the unit specifiers the recipes use.
func (u *unit) specifiers(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%q ends in %%", s)
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 'd':
			b.WriteString("/run/credentials/" + u.name)
		case 't':
			b.WriteString("/run")
		case 'n':
			b.WriteString(u.name)
		case 'N':
			b.WriteString(strings.TrimSuffix(u.name, path.Ext(u.name)))
		default:
			return "", fmt.Errorf("%q: specifier %%%c: teach the test what it means", s, s[i])
		}
	}
	return b.String(), nil
}

// splitWords splits s into words as systemd (and a shell, for the simple
// cases) does: at blanks, with "double" and 'single' quotes and
// backslash escapes.
func splitWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '"' || c == '\'':
			inWord = true
			j := i + 1
			for ; j < len(s) && s[j] != c; j++ {
				if c == '"' && s[j] == '\\' && j+1 < len(s) {
					j++
				}
				w.WriteByte(s[j])
			}
			if j == len(s) {
				return nil, fmt.Errorf("%q: unterminated quote", s)
			}
			i = j
		case c == '\\' && i+1 < len(s):
			inWord = true
			i++
			w.WriteByte(s[i])
		default:
			inWord = true
			w.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

func checkSystemd(t *testing.T, file, text string, h *help, bin string) ([]*instance, summary) {
	var s summary
	u, err := parseUnit(path.Base(file), text)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	where := file
	in := &instance{where: where, name: "unit", env: make(map[string]string), files: make(map[string]string)}
	dynamic := u.yes("DynamicUser")
	user, _ := u.last("Service", "User")
	switch {
	case dynamic:
		in.uid = 61234 // one of systemd's dynamic users
	case user == "" || user == "root" || user == "0":
		in.uid = 0
	default:
		in.uid = 65534
	}

	// What it runs, with which environment.
	if _, ok := u.last("Service", "EnvironmentFile"); ok {
		t.Errorf("%s: EnvironmentFile cannot be checked: put warren's variables in Environment=", where)
	}
	for _, v := range u.values("Service", "Environment") {
		words, err := splitWords(v)
		if err != nil {
			t.Errorf("%s: Environment=%s: %v", where, v, err)
		}
		for _, w := range words {
			k, val, ok := strings.Cut(w, "=")
			if !ok {
				t.Errorf("%s: Environment=%s: %q is not NAME=VALUE", where, v, w)
			}
			if val, err = u.specifiers(val); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			in.env[k] = val
		}
	}
	starts := u.values("Service", "ExecStart")
	if len(starts) != 1 {
		t.Fatalf("%s: want one ExecStart, have %q", where, starts)
	}
	argv, err := splitWords(strings.TrimLeft(starts[0], "@-:+!"))
	if err != nil {
		t.Fatalf("%s: ExecStart: %v", where, err)
	}
	for i, a := range argv {
		if argv[i], err = u.specifiers(a); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	if len(argv) > 0 && !path.IsAbs(argv[0]) {
		t.Errorf("%s: ExecStart=%s: give the binary's absolute path", where, argv[0])
	}
	in.argv = argv
	if !in.parse(t, h) {
		return nil, s
	}

	// Files: credentials, and for root the files under /etc/warren.
	for _, v := range u.values("Service", "LoadCredential") {
		id, src, _ := strings.Cut(v, ":")
		in.files["/run/credentials/"+u.name+"/"+id] = unknownContent
		if !path.IsAbs(src) {
			t.Errorf("%s: LoadCredential=%s: want an absolute source path", where, v)
		}
	}
	hidden, _ := u.list("Service", "InaccessiblePaths")
	if u.yes("ProtectHome") {
		hidden = append(hidden, "/home", "/root", "/run/user")
	}
	if u.yes("PrivateTmp") {
		hidden = append(hidden, "/tmp", "/var/tmp")
	}
	if in.uid == 0 && !slices.ContainsFunc(hidden, func(h string) bool { return under("/etc/warren", h) }) {
		// The admin installs these (RECIPES.md): root's, mode 600.
		in.dirs = append(in.dirs, "/etc/warren")
	}
	configs, _ := in.configFiles()
	for _, p := range configs {
		if dynamic && !strings.HasPrefix(p, "/run/credentials/") {
			t.Errorf("%s: a DynamicUser cannot read %s (root's, mode 600): hand it over with LoadCredential= and read it from %%d", where, p)
		}
	}

	// Where it may write: its runtime directory, ReadWritePaths, a
	// private /tmp.
	rw, _ := u.list("Service", "ReadWritePaths")
	in.writable = append(in.writable, rw...)
	rtDirs, _ := u.list("Service", "RuntimeDirectory")
	for _, d := range rtDirs {
		in.writable = append(in.writable, "/run/"+d)
	}
	if u.yes("PrivateTmp") {
		in.writable = append(in.writable, "/tmp")
	}
	if !slices.Contains(in.apiAddrs(), "unix:/run/warren/warren.sock") || !slices.Contains(rtDirs, "warren") {
		t.Errorf("%s: want the API on unix:/run/warren/warren.sock (served %q) with RuntimeDirectory=warren: where `warren status` as root looks by default", where, in.apiAddrs())
	}

	// Hardening every warren gets.
	for _, kv := range [][2]string{{"NoNewPrivileges", "yes"}, {"ProtectSystem", "strict"}, {"ProtectHome", "yes"}, {"PrivateTmp", "yes"}, {"Restart", "on-failure"}} {
		if v, _ := u.last("Service", kv[0]); v != kv[1] {
			t.Errorf("%s: want %s=%s, have %q", where, kv[0], kv[1], v)
		}
	}
	bounding, boundingSet := u.list("Service", "CapabilityBoundingSet")
	ambient, ambientSet := u.list("Service", "AmbientCapabilities")
	families, _ := u.list("Service", "RestrictAddressFamilies")
	devicePolicy, _ := u.last("Service", "DevicePolicy")
	switch in.mode() {
	case "host":
		s.hostWarrens++
		if dynamic || in.uid != 0 {
			t.Errorf("%s: host mode runs as root (bounded to its capabilities)", where)
		}
		if !boundingSet {
			t.Errorf("%s: want CapabilityBoundingSet=", where)
		}
		checkCaps(t, in, []string{"ALL"}, caps(bounding))
		if len(ambient) > 0 {
			t.Errorf("%s: root needs no AmbientCapabilities", where)
		}
		for _, k := range []string{"PrivateDevices", "PrivateNetwork"} {
			if u.yes(k) {
				t.Errorf("%s: %s would hide /dev/net/tun or the namespace warren must close", where, k)
			}
		}
		if devicePolicy == "closed" || devicePolicy == "strict" {
			allowed := slices.ContainsFunc(u.values("Service", "DeviceAllow"), func(v string) bool {
				dev, perm, _ := strings.Cut(v, " ")
				return dev == "/dev/net/tun" && strings.Contains(perm, "r") && strings.Contains(perm, "w")
			})
			if !allowed {
				t.Errorf("%s: DevicePolicy=%s without DeviceAllow=/dev/net/tun rw", where, devicePolicy)
			}
		}
		if len(families) > 0 {
			for _, f := range []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} {
				if !slices.Contains(families, f) {
					t.Errorf("%s: RestrictAddressFamilies lacks %s (netlink: routes and nftables)", where, f)
				}
			}
		}
		for _, k := range []string{"ExecStop", "ExecStopPost"} {
			for _, v := range u.values("Service", k) {
				if words, _ := splitWords(v); slices.Contains(words, "down") {
					t.Errorf("%s: %s=%s: after a crash the kill switch must stay (the restarted warren replaces it)", where, k, v)
				}
			}
		}
		if in.on("manage-resolv-conf") {
			rc, ok := in.setting("resolv-conf")
			if !ok {
				rc = "/etc/resolv.conf"
			}
			// warren rewrites it in place and keeps its backup beside it.
			if !in.canWrite(path.Dir(rc)) {
				t.Errorf("%s: warren manages %s, but cannot write %s (ReadWritePaths)", where, rc, path.Dir(rc))
			}
		} else if len(rw) > 0 {
			t.Errorf("%s: ReadWritePaths=%q, which warren needs only to manage resolv.conf", where, rw)
		}
	case "proxy":
		s.proxyWarrens++
		if !dynamic {
			t.Errorf("%s: want DynamicUser=yes: proxy mode needs no user of its own", where)
		}
		if !boundingSet || len(bounding) > 0 || !ambientSet || len(ambient) > 0 {
			t.Errorf("%s: want CapabilityBoundingSet= and AmbientCapabilities= empty: proxy mode needs no capability", where)
		}
		if low := in.lowPorts(); len(low) > 0 {
			t.Errorf("%s: %q: a port below 1024 needs a capability", where, low)
		}
		if !u.yes("PrivateDevices") {
			t.Errorf("%s: want PrivateDevices=yes", where)
		}
		want := []string{"AF_INET", "AF_INET6", "AF_UNIX"}
		slices.Sort(families)
		if !slices.Equal(families, want) {
			t.Errorf("%s: RestrictAddressFamilies=%q, want %q", where, families, want)
		}
	}
	checkInstance(t, in)
	analyzeUnit(t, file, text, bin, in.mode())
	return []*instance{in}, s
}

// analyzeUnit has systemd read the unit, if systemd-analyze is here: no
// unknown key or bad value, and at most a given exposure.
func analyzeUnit(t *testing.T, file, text, bin, mode string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Logf("%s: systemd-analyze is not installed: the unit is checked by the test's parser alone", file)
		return
	}
	// The unit as installed, with the binary where it says.
	dir := t.TempDir()
	u := filepath.Join(dir, path.Base(file))
	text = regexp.MustCompile(`(?m)^(ExecStart=[-@:+!]*)\S+`).ReplaceAllString(text, "${1}"+bin)
	if err := os.WriteFile(u, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", u).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("%s: systemd-analyze verify: %v\n%s", file, err, out)
	}
	// In tenths: 30 is an exposure of 3.0.
	threshold := map[string]string{"host": "30", "proxy": "20"}[mode]
	out, err = exec.Command("systemd-analyze", "security", "--offline=true", "--threshold="+threshold, u).CombinedOutput()
	if err != nil {
		t.Errorf("%s: systemd-analyze security: %v (want an exposure of at most %s tenths)\n%s", file, err, threshold, out)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
