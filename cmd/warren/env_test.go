package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	xproxy "golang.org/x/net/proxy"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/demo"
	warrenproxy "github.com/warren-vpn/warren/proxy"
	"github.com/warren-vpn/warren/state"
)

// envFixture is one config, as a wg-quick file's text and as the
// individual variables.
type envFixture struct {
	priv config.PrivateKey
	peer config.PublicKey
	psk  config.PresharedKey
	text string
	vars map[string]string
	want *config.Config // what both give
}

func newEnvFixture(t *testing.T) envFixture {
	t.Helper()
	priv, err := config.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	peerPriv, err := config.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	var psk config.PresharedKey
	copy(psk[:], bytes.Repeat([]byte{0x3c, 0xa5}, 16))
	f := envFixture{priv: priv, peer: peerPriv.PublicKey(), psk: psk}
	k, p, s := base64Key(priv), base64Key(f.peer), base64Key(psk)
	f.text = fmt.Sprintf(`[Interface]
PrivateKey = %s
Address = 10.7.0.2/32, fd00:7::2/128
DNS = 10.7.0.1
MTU = 1380
ListenPort = 51999

[Peer]
PublicKey = %s
PresharedKey = %s
Endpoint = vpn.example.com:51820
AllowedIPs = 10.7.0.0/16, ::/0
PersistentKeepalive = 25
`, k, p, s)
	f.vars = map[string]string{
		"WARREN_PRIVATE_KEY":               k,
		"WARREN_ADDRESS":                   "10.7.0.2/32, fd00:7::2/128",
		"WARREN_DNS_SERVERS":               "10.7.0.1",
		"WARREN_MTU":                       "1380",
		"WARREN_LISTEN_PORT":               "51999",
		"WARREN_PEER_PUBLIC_KEY":           p,
		"WARREN_PEER_PRESHARED_KEY":        s,
		"WARREN_PEER_ENDPOINT":             "vpn.example.com:51820",
		"WARREN_PEER_ALLOWED_IPS":          "10.7.0.0/16, ::/0",
		"WARREN_PEER_PERSISTENT_KEEPALIVE": "25",
	}
	pfx := netip.MustParsePrefix
	f.want = &config.Config{
		Interface: config.Interface{
			PrivateKey: priv,
			Addresses:  []netip.Prefix{pfx("10.7.0.2/32"), pfx("fd00:7::2/128")},
			DNS:        []netip.Addr{netip.MustParseAddr("10.7.0.1")},
			MTU:        1380,
			ListenPort: 51999,
		},
		Peers: []config.Peer{{
			PublicKey:           f.peer,
			PresharedKey:        psk,
			Endpoint:            config.Endpoint{Host: "vpn.example.com", Port: 51820},
			AllowedIPs:          []netip.Prefix{pfx("10.7.0.0/16"), pfx("::/0")},
			PersistentKeepalive: 25 * time.Second,
		}},
	}
	return f
}

// secrets are the fixture's secrets as they could show: base64 and hex.
func (f envFixture) secrets() map[string]string {
	return map[string]string{
		"private key":         base64Key(f.priv),
		"private key (hex)":   hex.EncodeToString(f.priv[:]),
		"preshared key":       base64Key(f.psk),
		"preshared key (hex)": hex.EncodeToString(f.psk[:]),
	}
}

// with returns the fixture's variables, changed: a "" value unsets one.
func (f envFixture) with(changes map[string]string) map[string]string {
	env := make(map[string]string)
	for k, v := range f.vars {
		env[k] = v
	}
	for k, v := range changes {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return env
}

// setDefaultConfig points the default config at path for one test.
func setDefaultConfig(t *testing.T, path string) {
	old := defaultConfig
	defaultConfig = path
	t.Cleanup(func() { defaultConfig = old })
}

// comparable returns what of cfg a test compares: its interface and peers,
// without the lines they were on.
func comparable(cfg *config.Config) (config.Interface, []config.Peer) {
	peers := append([]config.Peer(nil), cfg.Peers...)
	for i := range peers {
		peers[i].Line = 0
	}
	return cfg.Interface, peers
}

// Each source gives the config it holds, to warren up's and warren check's
// one function (configSource), and check says it is valid.
func TestEnvConfigSources(t *testing.T) {
	f := newEnvFixture(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "wg0.conf")
	rewrite(t, file, f.text)
	keyFile := filepath.Join(dir, "private.key")
	rewrite(t, keyFile, base64Key(f.priv)+"\n")
	pskFile := filepath.Join(dir, "preshared.key")
	rewrite(t, pskFile, base64Key(f.psk)+"\r\n")

	minimal := map[string]string{
		"WARREN_PRIVATE_KEY":     f.vars["WARREN_PRIVATE_KEY"],
		"WARREN_ADDRESS":         "10.7.0.2",
		"WARREN_PEER_PUBLIC_KEY": f.vars["WARREN_PEER_PUBLIC_KEY"],
		"WARREN_PEER_ENDPOINT":   "[2001:db8::1]:51820",
	}
	wantMinimal := &config.Config{
		Interface: config.Interface{PrivateKey: f.priv, Addresses: []netip.Prefix{netip.MustParsePrefix("10.7.0.2/32")}, MTU: config.DefaultMTU},
		Peers: []config.Peer{{
			PublicKey:  f.peer,
			Endpoint:   config.Endpoint{Host: "2001:db8::1", Port: 51820},
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
		}},
	}

	tests := []struct {
		name        string
		args        []string // warren check's
		env         map[string]string
		defaultFile bool // the default config exists
		wantSource  string
		want        *config.Config // nil: f.want
	}{
		{name: "-c", args: []string{"-c", file}, wantSource: "file " + file},
		{name: "WARREN_CONFIG", env: map[string]string{"WARREN_CONFIG": file}, wantSource: "file " + file},
		{name: "WARREN_WG_CONFIG", env: map[string]string{"WARREN_WG_CONFIG": f.text}, wantSource: "WARREN_WG_CONFIG"},
		{name: "WARREN_WG_CONFIG_FILE", env: map[string]string{"WARREN_WG_CONFIG_FILE": file}, wantSource: "WARREN_WG_CONFIG_FILE " + file},
		{name: "variables", env: f.vars,
			wantSource: "variables WARREN_PRIVATE_KEY, WARREN_ADDRESS, WARREN_DNS_SERVERS, WARREN_MTU, WARREN_LISTEN_PORT, WARREN_PEER_PUBLIC_KEY, " +
				"WARREN_PEER_PRESHARED_KEY, WARREN_PEER_ENDPOINT, WARREN_PEER_ALLOWED_IPS, WARREN_PEER_PERSISTENT_KEEPALIVE"},
		{name: "variables, keys in files",
			env:        f.with(map[string]string{"WARREN_PRIVATE_KEY": "", "WARREN_PRIVATE_KEY_FILE": keyFile, "WARREN_PEER_PRESHARED_KEY": "", "WARREN_PEER_PRESHARED_KEY_FILE": pskFile}),
			wantSource: "variables WARREN_PRIVATE_KEY_FILE, WARREN_ADDRESS"},
		{name: "variables, defaults", env: minimal, want: wantMinimal,
			wantSource: "variables WARREN_PRIVATE_KEY, WARREN_ADDRESS, WARREN_PEER_PUBLIC_KEY, WARREN_PEER_ENDPOINT"},
		{name: "default file", defaultFile: true, wantSource: "file " + file + " (the default)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.defaultFile {
				setDefaultConfig(t, file)
			} else {
				setDefaultConfig(t, filepath.Join(t.TempDir(), "missing.conf"))
			}
			getenv := func(k string) string { return tt.env[k] }
			var paths []string
			if len(tt.args) > 0 {
				paths = tt.args[1:]
			} else if c := getenv("WARREN_CONFIG"); c != "" {
				paths = []string{c}
			}
			src, err := configSource(paths, getenv)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(src.String(), tt.wantSource) {
				t.Errorf("source %q, want %q", src, tt.wantSource)
			}
			configs, warnings, err := src.read()
			if err != nil || len(configs) != 1 {
				t.Fatalf("read: %d configs, %v", len(configs), err)
			}
			for _, w := range warnings {
				if !strings.Contains(w.Msg, "readable by group or others") {
					t.Errorf("warning: %v", w)
				}
			}
			want := tt.want
			if want == nil {
				want = f.want
			}
			gotIn, gotPeers := comparable(configs[0])
			wantIn, wantPeers := comparable(want)
			if !reflect.DeepEqual(gotIn, wantIn) || !reflect.DeepEqual(gotPeers, wantPeers) {
				t.Errorf("config:\n got %+v %+v\nwant %+v %+v", gotIn, gotPeers, wantIn, wantPeers)
			}
			code, stdout, stderr := runCLI(t, tt.env, append([]string{"check"}, tt.args...)...)
			if code != 0 || !strings.Contains(stdout, "valid: ") {
				t.Errorf("warren check: exit %d\n%s%s", code, stdout, stderr)
			}
		})
	}
}

// A config that cannot be had is an error, the same from warren up and
// warren check, that names the variable (and, for WARREN_WG_CONFIG, the
// line) and never shows a variable's value or any key.
func TestEnvConfigErrors(t *testing.T) {
	f := newEnvFixture(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "wg0.conf")
	rewrite(t, file, f.text)
	keyFile := filepath.Join(dir, "private.key")
	rewrite(t, keyFile, base64Key(f.priv)+"\n")
	badKeyFile := filepath.Join(dir, "bad.key")
	rewrite(t, badKeyFile, "c2VjcmV0LWJ1dC1zaG9ydC1rZXktdmFsdWU=\n")
	emptyFile := filepath.Join(dir, "empty")
	rewrite(t, emptyFile, "")
	missing := filepath.Join(dir, "missing.conf")
	setDefaultConfig(t, missing)
	badText := strings.Replace(f.text, "Address = 10.7.0.2/32, fd00:7::2/128", "Address = zz-bad-address", 1)
	badKeyText := strings.Replace(f.text, base64Key(f.priv), "c2VjcmV0LWJ1dC1zaG9ydC1rZXktdmFsdWU=", 1)
	own := base64Key(f.priv.PublicKey())

	tests := []struct {
		name   string
		args   []string // after the command
		env    map[string]string
		want   []string
		hidden []string // besides the fixture's keys, what the message must not show
	}{
		// More than one source.
		{"-c and WARREN_WG_CONFIG", []string{"-c", file}, map[string]string{"WARREN_WG_CONFIG": f.text},
			[]string{"given more than one way", "-c/--config", "WARREN_WG_CONFIG"}, nil},
		{"WARREN_CONFIG and WARREN_WG_CONFIG_FILE", nil, map[string]string{"WARREN_CONFIG": file, "WARREN_WG_CONFIG_FILE": file},
			[]string{"given more than one way", "WARREN_CONFIG", "WARREN_WG_CONFIG_FILE"}, nil},
		{"WARREN_WG_CONFIG and WARREN_PRIVATE_KEY", nil, map[string]string{"WARREN_WG_CONFIG": f.text, "WARREN_PRIVATE_KEY": base64Key(f.priv)},
			[]string{"given more than one way", "WARREN_WG_CONFIG and by the config variables WARREN_PRIVATE_KEY"}, nil},
		{"-c and one variable", []string{"-c", file}, map[string]string{"WARREN_PEER_ALLOWED_IPS": "10.0.0.0/8"},
			[]string{"given more than one way", "-c/--config", "WARREN_PEER_ALLOWED_IPS"}, nil},
		// A secret and its file.
		{"WARREN_PRIVATE_KEY and _FILE", nil, f.with(map[string]string{"WARREN_PRIVATE_KEY_FILE": keyFile}),
			[]string{"WARREN_PRIVATE_KEY and WARREN_PRIVATE_KEY_FILE are both set"}, nil},
		{"WARREN_PEER_PRESHARED_KEY and _FILE", nil, f.with(map[string]string{"WARREN_PEER_PRESHARED_KEY_FILE": keyFile}),
			[]string{"WARREN_PEER_PRESHARED_KEY and WARREN_PEER_PRESHARED_KEY_FILE are both set"}, nil},
		{"WARREN_WG_CONFIG and _FILE", nil, map[string]string{"WARREN_WG_CONFIG": f.text, "WARREN_WG_CONFIG_FILE": file},
			[]string{"WARREN_WG_CONFIG and WARREN_WG_CONFIG_FILE are both set"}, nil},
		{"unreadable key file", nil, f.with(map[string]string{"WARREN_PRIVATE_KEY": "", "WARREN_PRIVATE_KEY_FILE": missing}),
			[]string{"WARREN_PRIVATE_KEY_FILE: ", missing}, nil},
		{"empty key file", nil, f.with(map[string]string{"WARREN_PRIVATE_KEY": "", "WARREN_PRIVATE_KEY_FILE": emptyFile}),
			[]string{"WARREN_PRIVATE_KEY_FILE: " + emptyFile + " is empty"}, nil},
		// Missing and bad variables.
		{"missing", nil, map[string]string{"WARREN_PRIVATE_KEY": base64Key(f.priv)},
			[]string{"WARREN_ADDRESS: not set", "WARREN_PEER_PUBLIC_KEY: not set", "WARREN_PEER_ENDPOINT: not set"}, nil},
		{"bad private key", nil, f.with(map[string]string{"WARREN_PRIVATE_KEY": "c2VjcmV0LWJ1dC1zaG9ydC1rZXktdmFsdWU="}),
			[]string{"WARREN_PRIVATE_KEY: not a valid key"}, []string{"c2VjcmV0LWJ1dC1zaG9ydC1rZXktdmFsdWU="}},
		{"bad private key file", nil, f.with(map[string]string{"WARREN_PRIVATE_KEY": "", "WARREN_PRIVATE_KEY_FILE": badKeyFile}),
			[]string{"WARREN_PRIVATE_KEY_FILE: not a valid key"}, []string{"c2VjcmV0LWJ1dC1zaG9ydC1rZXktdmFsdWU="}},
		{"bad address", nil, f.with(map[string]string{"WARREN_ADDRESS": "10.7.0.2/32, zz-bad-address"}),
			[]string{"WARREN_ADDRESS: an item of its value is not an IP address"}, []string{"zz-bad-address"}},
		{"bad DNS servers", nil, f.with(map[string]string{"WARREN_DNS_SERVERS": "dns!bad!server"}),
			[]string{"WARREN_DNS_SERVERS: its value is neither"}, []string{"dns!bad!server"}},
		{"bad MTU", nil, f.with(map[string]string{"WARREN_MTU": "12345678"}),
			[]string{"WARREN_MTU: want a number"}, []string{"12345678"}},
		{"MTU too small for IPv6", nil, f.with(map[string]string{"WARREN_MTU": "1000"}),
			[]string{"WARREN_MTU: an IPv6 tunnel needs an MTU of at least 1280"}, nil},
		{"bad listen port", nil, f.with(map[string]string{"WARREN_LISTEN_PORT": "654321"}),
			[]string{"WARREN_LISTEN_PORT: want a port number"}, []string{"654321"}},
		{"bad peer public key", nil, f.with(map[string]string{"WARREN_PEER_PUBLIC_KEY": "bm90LWEta2V5LWF0LWFsbA=="}),
			[]string{"WARREN_PEER_PUBLIC_KEY: not a valid key"}, []string{"bm90LWEta2V5LWF0LWFsbA=="}},
		{"peer public key is our own", nil, f.with(map[string]string{"WARREN_PEER_PUBLIC_KEY": own}),
			[]string{"WARREN_PEER_PUBLIC_KEY: its PublicKey is this interface's own public key"}, []string{own}},
		{"bad preshared key", nil, f.with(map[string]string{"WARREN_PEER_PRESHARED_KEY": "cHNrLXRvby1zaG9ydA=="}),
			[]string{"WARREN_PEER_PRESHARED_KEY: not a valid key"}, []string{"cHNrLXRvby1zaG9ydA=="}},
		{"bad endpoint host", nil, f.with(map[string]string{"WARREN_PEER_ENDPOINT": "bad_host.example:51820"}),
			[]string{"WARREN_PEER_ENDPOINT: its host is neither"}, []string{"bad_host"}},
		{"endpoint without port", nil, f.with(map[string]string{"WARREN_PEER_ENDPOINT": "noport.example"}),
			[]string{"WARREN_PEER_ENDPOINT: want host:port"}, []string{"noport.example"}},
		{"bad allowed IPs", nil, f.with(map[string]string{"WARREN_PEER_ALLOWED_IPS": "10.0.0.0/8, qq-bogus/99"}),
			[]string{"WARREN_PEER_ALLOWED_IPS: an item of its value is not an IP address"}, []string{"qq-bogus"}},
		{"bad keepalive", nil, f.with(map[string]string{"WARREN_PEER_PERSISTENT_KEEPALIVE": "sometimes"}),
			[]string{"WARREN_PEER_PERSISTENT_KEEPALIVE: want"}, []string{"sometimes"}},
		{"line break", nil, f.with(map[string]string{"WARREN_ADDRESS": "10.7.0.2/32\nPostUp = injected-command"}),
			[]string{"WARREN_ADDRESS: holds a line break"}, []string{"injected-command"}},
		{"two bad variables", nil, f.with(map[string]string{"WARREN_MTU": "big", "WARREN_PEER_ENDPOINT": "x_y:1"}),
			[]string{"WARREN_MTU: ", "WARREN_PEER_ENDPOINT: "}, []string{"x_y", "big", "no [Peer] has an Endpoint"}},
		// WARREN_WG_CONFIG: the variable and the line.
		{"bad WARREN_WG_CONFIG", nil, map[string]string{"WARREN_WG_CONFIG": badText},
			[]string{"WARREN_WG_CONFIG:3: Address: "}, nil},
		{"bad key in WARREN_WG_CONFIG", nil, map[string]string{"WARREN_WG_CONFIG": badKeyText},
			[]string{"WARREN_WG_CONFIG:2: PrivateKey: not a valid key"}, []string{"c2VjcmV0LWJ1dC1zaG9ydC1rZXktdmFsdWU="}},
		// None: every way is named.
		{"no config", nil, nil,
			[]string{"no config", "-c FILE", "WARREN_CONFIG", "WARREN_WG_CONFIG ", "WARREN_WG_CONFIG_FILE", "WARREN_PRIVATE_KEY", "WARREN_ADDRESS",
				"WARREN_PEER_PUBLIC_KEY", "WARREN_PEER_ENDPOINT", missing}, nil},
	}
	for _, tt := range tests {
		for _, cmd := range []string{"check", "up"} {
			t.Run(tt.name+"/"+cmd, func(t *testing.T) {
				args := append([]string{cmd}, tt.args...)
				if cmd == "up" {
					// Should the config be taken, up runs until the deadline.
					args = append(args, "--no-connect", "--api", "off", "--socks5", "off", "--dns", "off")
				}
				code, stdout, stderr := runCLIWithin(t, 5*time.Second, tt.env, args...)
				if code != 1 {
					t.Fatalf("exit %d, want 1\n%s%s", code, stdout, stderr)
				}
				for _, want := range tt.want {
					if !strings.Contains(stderr, want) {
						t.Errorf("the error does not say %q:\n%s", want, stderr)
					}
				}
				for what, secret := range f.secrets() {
					if strings.Contains(stdout+stderr, secret) {
						t.Errorf("the output shows the %s:\n%s%s", what, stdout, stderr)
					}
				}
				for _, h := range tt.hidden {
					if strings.Contains(stdout+stderr, h) {
						t.Errorf("the output shows %q:\n%s%s", h, stdout, stderr)
					}
				}
			})
		}
	}
}

// runCLIWithin runs a command line as runCLI does, stopping it (as SIGTERM
// would) after d.
func runCLIWithin(t *testing.T, d time.Duration, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	code = run(ctx, args, func(k string) string { return env[k] }, &out, &errb)
	return code, out.String(), errb.String()
}

// Every secret may be in its variable or in the file X_FILE names (less
// one trailing newline); both is an error naming both. (The keys' are in
// TestEnvConfigSources and TestEnvConfigErrors.)
func TestEnvSecretFiles(t *testing.T) {
	const secret = "s3cret-Value_42"
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	rewrite(t, file, secret+"\n")

	// Each reads one secret as warren does, from flags and environment.
	parse := func(t *testing.T, getenv func(string) string, register func(*flag.FlagSet)) *flag.FlagSet {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		register(fs)
		if err := parseFlags(fs, nil, getenv, nil); err != nil {
			t.Fatal(err)
		}
		return fs
	}
	proxyPassword := func(which string) func(*testing.T, func(string) string) (string, error) {
		return func(t *testing.T, getenv func(string) string) (string, error) {
			var pf proxyFlags
			fs := parse(t, getenv, pf.register)
			var o appOptions
			if err := pf.frontends(&o, given(fs), nil, getenv); err != nil {
				return "", err
			}
			specs := o.socks5
			if which == "http" {
				specs = o.http
			}
			if len(specs) != 1 || specs[0].creds == nil {
				t.Fatalf("%s listeners: %+v", which, specs)
			}
			return specs[0].creds.Password, nil
		}
	}
	secrets := []struct {
		name string            // X
		env  map[string]string // what else it needs
		read func(*testing.T, func(string) string) (string, error)
	}{
		{"WARREN_SOCKS5_PASSWORD", map[string]string{"WARREN_SOCKS5_USER": "alice"}, proxyPassword("socks5")},
		{"WARREN_HTTP_PASSWORD", map[string]string{"WARREN_HTTP": "127.0.0.1:8118", "WARREN_HTTP_USER": "bob"}, proxyPassword("http")},
		{"WARREN_API_TOKEN", map[string]string{"WARREN_API": "tcp:127.0.0.1:0"}, func(t *testing.T, getenv func(string) string) (string, error) {
			var af apiServeFlags
			parse(t, getenv, af.register)
			var o appOptions
			err := af.apply(&o, getenv)
			return o.apiToken, err
		}},
		{"WARREN_API_TOKEN (client)", map[string]string{"WARREN_API": "tcp:127.0.0.1:1"}, func(t *testing.T, getenv func(string) string) (string, error) {
			var af apiFlags
			parse(t, getenv, func(fs *flag.FlagSet) { af.register(fs, getenv) })
			c, err := af.client(getenv)
			if err != nil {
				return "", err
			}
			return c.token, nil
		}},
	}
	for _, s := range secrets {
		name, _, _ := strings.Cut(s.name, " ")
		for _, how := range []string{"variable", "file", "both"} {
			t.Run(s.name+"/"+how, func(t *testing.T) {
				env := map[string]string{}
				for k, v := range s.env {
					env[k] = v
				}
				if how != "file" {
					env[name] = secret
				}
				if how != "variable" {
					env[name+"_FILE"] = file
				}
				got, err := s.read(t, func(k string) string { return env[k] })
				switch {
				case how == "both" && (err == nil || !strings.Contains(err.Error(), name+" and ") || !strings.Contains(err.Error(), name+"_FILE")):
					t.Fatalf("both set: %v, want an error naming %s and %s_FILE", err, name, name)
				case how == "both":
					if strings.Contains(err.Error(), secret) {
						t.Errorf("the error shows the secret: %v", err)
					}
				case err != nil:
					t.Fatal(err)
				case got != secret:
					t.Fatalf("read %q, want %q", got, secret)
				}
			})
		}
	}
}

// A reload reads WARREN_PRIVATE_KEY_FILE again: the new key is used for the
// next connection.
func TestEnvReloadPicksUpKeyFile(t *testing.T) {
	serverKey, err := config.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	first := startDemo(t, demo.Options{ServerKey: serverKey})
	cfg := first.ClientConfig()
	keyFile := writeFile(t, "private.key", base64Key(cfg.Interface.PrivateKey)+"\n")
	env := map[string]string{
		"WARREN_PRIVATE_KEY_FILE": keyFile,
		"WARREN_ADDRESS":          joinStrings(cfg.Interface.Addresses),
		"WARREN_DNS_SERVERS":      joinStrings(cfg.Interface.DNS),
		"WARREN_PEER_PUBLIC_KEY":  base64Key(cfg.Peers[0].PublicKey),
		"WARREN_PEER_ENDPOINT":    cfg.Peers[0].Endpoint.String(),
	}
	src, err := configSource(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	configs, err := src.load(testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if configs[0].Interface.PrivateKey != cfg.Interface.PrivateKey {
		t.Fatal("the config does not have the key in the file")
	}
	a := startTestApp(t, configs[0], func(o *appOptions) {
		o.load = func() ([]*config.Config, error) { return src.load(o.log) }
	})
	connect(t, a)
	c := socksClient(t, a.socks5Addr.String())
	get(t, c, "http://"+demo.Name+"/")
	before := a.machine.Current()

	// The server now knows this client by another key, which the rotated
	// file holds: only a warren that read it again gets through.
	port := first.Port()
	first.Close()
	newKey, err := config.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	startDemo(t, demo.Options{ServerKey: serverKey, ClientKey: newKey, ListenPort: port})
	rewrite(t, keyFile, base64Key(newKey)+"\n")
	if _, err := a.reload(context.Background()); err != nil {
		t.Fatalf("reload: %v", err)
	}
	waitState(t, a, 15*time.Second, func(s state.Snapshot) bool { return s.State == state.Connected && s.Seq > before.Seq })
	get(t, c, "http://"+demo.Name+"/")
}

// The effective configuration is logged with the addresses, the endpoint
// and the listeners, and without any key, password or token.
func TestEffectiveConfigLog(t *testing.T) {
	f := newEnvFixture(t)
	const (
		socksPassword = "socks-pass-Zq81"
		httpPassword  = "http-pass-Yx27"
		token         = "api-token-Wv55"
	)
	src, err := configSource(nil, func(k string) string { return f.vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	configs, _, err := src.read()
	if err != nil {
		t.Fatal(err)
	}
	o := &appOptions{
		configs:  configs,
		socks5:   []listenSpec{{addr: "127.0.0.1:1080", creds: &warrenproxy.Credentials{User: "alice", Password: socksPassword}}},
		http:     []listenSpec{{addr: "127.0.0.1:8118", creds: &warrenproxy.Credentials{User: "bob", Password: httpPassword}}},
		dns:      "127.0.0.1:5353",
		forwards: []forwardSpec{{local: "127.0.0.1:2222", target: "10.7.0.9:22", tcp: true}},
		exposes:  []exposeSpec{{port: 8080, target: "127.0.0.1:80"}},
		probes:   []netip.Addr{netip.MustParseAddr("10.7.0.1")},
		hold:     5 * time.Second,
		api:      []apiSpec{{network: "tcp", addr: "127.0.0.1:9090"}},
		apiToken: token,
	}
	hf := hostFlags{mode: "proxy"}
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := (&logFlags{level: "info", format: format}).logger(&buf)
			if err != nil {
				t.Fatal(err)
			}
			logEffective(log, src, hf.logAttrs(), o)
			out := buf.String()
			if n := strings.Count(out, "\n"); n != 2 {
				t.Errorf("%d lines, want 2 (one for warren, one for the config):\n%s", n, out)
			}
			for _, want := range []string{
				"effective configuration", "variables WARREN_PRIVATE_KEY", "proxy",
				"127.0.0.1:1080 (user alice, password (redacted))", "127.0.0.1:8118 (user bob, password (redacted))",
				"127.0.0.1:5353", "tcp:127.0.0.1:2222=10.7.0.9:22", "8080=127.0.0.1:80", "tcp:127.0.0.1:9090", "5s", "10.7.0.1",
				"10.7.0.2/32,fd00:7::2/128", "1380", "51999", base64Key(f.peer), "vpn.example.com:51820",
				"10.7.0.0/16,::/0", "25s",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("the log has no %q:\n%s", want, out)
				}
			}
			secrets := f.secrets()
			secrets["SOCKS5 password"], secrets["HTTP password"], secrets["API token"] = socksPassword, httpPassword, token
			for what, secret := range secrets {
				if strings.Contains(out, secret) {
					t.Errorf("the log shows the %s:\n%s", what, out)
				}
			}
			if format == "text" && (!strings.Contains(out, "preshared_key=(redacted)") || !strings.Contains(out, "api_token=(redacted)")) {
				t.Errorf("the log does not say that the preshared key and the token are set:\n%s", out)
			}
		})
	}
}

// warren up, from the individual variables with the secrets in files and
// the API token in WARREN_API_TOKEN, connects and serves; the client
// commands take the token from the environment too; the log has the
// effective configuration and no secret.
func TestUpFromEnvBinary(t *testing.T) {
	var psk config.PresharedKey
	copy(psk[:], bytes.Repeat([]byte{0x71, 0x1e}, 16))
	srv := startDemo(t, demo.Options{PresharedKey: psk})
	cfg := srv.ClientConfig()
	const (
		socksPassword = "socks-env-secret-Pq3"
		token         = "api-env-token-Lm9"
	)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "private.key")
	rewrite(t, keyFile, base64Key(cfg.Interface.PrivateKey)+"\n")
	pskFile := filepath.Join(dir, "psk")
	rewrite(t, pskFile, base64Key(psk)+"\n")
	passFile := filepath.Join(dir, "socks5.pass")
	rewrite(t, passFile, socksPassword+"\n")
	socksAddr, apiAddr := freePort(t), freePort(t)
	env := map[string]string{
		"WARREN_PRIVATE_KEY_FILE":        keyFile,
		"WARREN_ADDRESS":                 joinStrings(cfg.Interface.Addresses),
		"WARREN_DNS_SERVERS":             joinStrings(cfg.Interface.DNS),
		"WARREN_PEER_PUBLIC_KEY":         base64Key(cfg.Peers[0].PublicKey),
		"WARREN_PEER_PRESHARED_KEY_FILE": pskFile,
		"WARREN_PEER_ENDPOINT":           cfg.Peers[0].Endpoint.String(),
		"WARREN_SOCKS5":                  socksAddr,
		"WARREN_SOCKS5_USER":             "alice",
		"WARREN_SOCKS5_PASSWORD_FILE":    passFile,
		"WARREN_DNS":                     "off",
		"WARREN_API_TOKEN":               token,
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	p := startWarren(t, "up", "--api", "unix:"+filepath.Join(dir, "warren.sock"), "--api", "tcp:"+apiAddr)
	p.waitLog(t, 15*time.Second, msg("tunnel connected"))

	d, _ := xproxy.SOCKS5("tcp", socksAddr, &xproxy.Auth{User: "alice", Password: socksPassword}, xproxy.Direct)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.(xproxy.ContextDialer).DialContext}}
	resp, err := c.Get("http://" + demo.Name + "/")
	if err != nil {
		t.Fatalf("through the proxy, with the password from WARREN_SOCKS5_PASSWORD_FILE: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	code, stdout, stderr := runCLI(t, map[string]string{"WARREN_API": "tcp:" + apiAddr, "WARREN_API_TOKEN": token}, "status")
	if code != 0 || !strings.Contains(stdout, "connected") {
		t.Errorf("warren status with WARREN_API_TOKEN: exit %d\n%s%s", code, stdout, stderr)
	}

	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Errorf("exit code %d", code)
	}
	logs := p.output()
	for _, want := range []string{`"msg":"effective configuration"`, `"msg":"effective WireGuard config"`,
		`"source":"variables WARREN_PRIVATE_KEY_FILE, WARREN_ADDRESS`, cfg.Interface.Addresses[0].String(),
		cfg.Peers[0].Endpoint.String(), `"preshared_key":"(redacted)"`, "password (redacted)"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log has no %q", want)
		}
	}
	secrets := map[string]string{
		"private key":     base64Key(cfg.Interface.PrivateKey),
		"preshared key":   base64Key(psk),
		"SOCKS5 password": socksPassword,
		"API token":       token,
	}
	for what, secret := range secrets {
		if strings.Contains(logs, secret) {
			t.Errorf("the log shows the %s", what)
		}
	}
}

// warren up -h documents every variable of the config and every secret's
// _FILE variable, by name.
func TestUpHelpNamesEnv(t *testing.T) {
	code, stdout, stderr := runCLI(t, nil, "up", "-h")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := stdout + stderr
	names := []string{"WARREN_CONFIG", "WARREN_WG_CONFIG", "WARREN_WG_CONFIG_FILE", defaultConfigPath}
	for _, v := range wgVars {
		names = append(names, v.name)
	}
	for _, s := range secretVars {
		names = append(names, s, s+"_FILE")
	}
	for _, name := range names {
		if !strings.Contains(help, name) {
			t.Errorf("warren up -h does not name %s", name)
		}
	}
	if len(wgVars) != 10 || len(secretVars) != 6 {
		t.Errorf("%d config variables and %d secrets: update this test and the README", len(wgVars), len(secretVars))
	}
	_, top, _ := runCLI(t, nil, "help")
	for _, name := range []string{"WARREN_WG_CONFIG", "WARREN_WG_CONFIG_FILE", "WARREN_PRIVATE_KEY", "WARREN_API_TOKEN", "_FILE", defaultConfigPath} {
		if !strings.Contains(top, name) {
			t.Errorf("warren's usage does not name %s", name)
		}
	}
}

// redact leaves out every form in which the parser quotes a value.
func TestRedact(t *testing.T) {
	tests := []struct {
		name, msg, value, want string
	}{
		{"whole", `"zz" is not an IP address`, "zz", "its value is not an IP address"},
		{"item", `"zz" is not an IP address`, "10.0.0.1, zz", "an item of its value is not an IP address"},
		{"host", `"a_b" is neither an IP address nor a host name`, "a_b:1", "its host is neither an IP address nor a host name"},
		{"not the value", `want "off" or seconds from 0 to 65535`, "often", `want "off" or seconds from 0 to 65535`},
		{"unknown message", "bad: c2VjcmV0LWtleQ== here", "c2VjcmV0LWtleQ==", "invalid value (not shown)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redact(tt.msg, tt.value); got != tt.want {
				t.Errorf("redact(%q, %q) = %q, want %q", tt.msg, tt.value, got, tt.want)
			}
		})
	}
}
