package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The proxy password of the tests. Like the keys, it must never show.
const testPassword = "correct horse battery"

// testEnv is the environment of the wireproxy tests.
var testEnv = map[string]string{
	"WG_KEY":   privB64,
	"PSK":      pskB64,
	"PROXY_PW": testPassword,
	"EMPTY":    "",
	"TARGET":   "db.internal:5432",
}

func lookupTestEnv(name string) (string, bool) {
	v, ok := testEnv[name]
	return v, ok
}

// files is a fake file system for WGConfig.
func files(m map[string]string) func(string) ([]byte, error) {
	return func(path string) ([]byte, error) {
		if s, ok := m[path]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
}

var testOptions = ParseOptions{LookupEnv: lookupTestEnv, ReadFile: files(nil)}

// wgInline is an inline [Interface] and [Peer] of a wireproxy file, lines
// 1 to 8, its keys from the environment.
const wgInline = `[Interface]
PrivateKey = $WG_KEY
Address = 10.64.0.2/32
DNS = 10.64.0.1
[Peer]
PublicKey = ` + pub1B64 + `
PresharedKey = ${PSK}
Endpoint = vpn.example.com:51820
`

const fullWireproxy = `CheckAlive = 1.1.1.1, 3.3.3.3   ; wireproxy's own monitor
CheckAliveInterval = 5
` + wgInline + `
[Socks5]
BindAddress = 127.0.0.1:25344

[socks5]   # a second one, with authentication
bindaddress = [::1]:25346
username = alice
password = $PROXY_PW

[HTTP]
BindAddress = :25345
Username = "bob"
Password = ` + "`p#ss;word`" + `

[TCPClientTunnel]
BindAddress = 127.0.0.1:25565
Target = play.example.net:25565

[tcpservertunnel]
ListenPort = 3422
Target = ${TARGET}
`

func TestParseWireproxyFull(t *testing.T) {
	cfg, warnings, err := testOptions.Parse("wp.conf", []byte(fullWireproxy))
	if err != nil {
		t.Fatal(err)
	}
	pfx := netip.MustParsePrefix
	want := &Config{
		Path:      "wp.conf",
		Wireproxy: true,
		Interface: Interface{
			PrivateKey: PrivateKey(key(t, privB64)),
			Addresses:  []netip.Prefix{pfx("10.64.0.2/32")},
			DNS:        []netip.Addr{netip.MustParseAddr("10.64.0.1")},
			MTU:        DefaultMTU,
		},
		Peers: []Peer{{
			PublicKey:    PublicKey(key(t, pub1B64)),
			PresharedKey: PresharedKey(key(t, pskB64)),
			Endpoint:     Endpoint{Host: "vpn.example.com", Port: 51820},
			AllowedIPs:   []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")}, // wireproxy's default
			Line:         7,
		}},
		Frontends: Frontends{
			SOCKS5: []ProxyListener{
				{BindAddress: "127.0.0.1:25344", Line: 12},
				{BindAddress: "[::1]:25346", Username: "alice", Password: testPassword, Line: 15},
			},
			HTTP:     []ProxyListener{{BindAddress: ":25345", Username: "bob", Password: "p#ss;word", Line: 20}},
			Forwards: []Forward{{BindAddress: "127.0.0.1:25565", Target: "play.example.net:25565", Line: 25}},
			Exposes:  []Expose{{ListenPort: 3422, Target: "db.internal:5432", Line: 29}},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %s\nwant %s", unredactedWireproxy(cfg), unredactedWireproxy(want))
	}
	var got []string
	for _, w := range warnings {
		got = append(got, w.Error())
	}
	wantWarnings := []string{
		"wp.conf:1: CheckAlive: ignored: warren's own liveness monitor replaces wireproxy's CheckAlive",
		"wp.conf:2: CheckAliveInterval: ignored: warren's own liveness monitor replaces wireproxy's CheckAliveInterval",
	}
	if !reflect.DeepEqual(got, wantWarnings) {
		t.Errorf("warnings %q, want %q", got, wantWarnings)
	}
}

// unredactedWireproxy adds the proxy passwords to unredacted.
func unredactedWireproxy(c *Config) string {
	s := unredacted(c)
	for _, l := range append(append([]ProxyListener(nil), c.Frontends.SOCKS5...), c.Frontends.HTTP...) {
		s += fmt.Sprintf(" password=%q", string(l.Password))
	}
	return s
}

func TestIsWireproxy(t *testing.T) {
	tests := []struct {
		name string
		text string
		want bool
	}{
		{"wg-quick", fullConfig, false},
		{"WGConfig at the top", "WGConfig = wg0.conf\n", true},
		{"CheckAlive at the top, lower case", "checkalive = 1.1.1.1\n[Interface]\n", true},
		{"CheckAliveInterval after a comment", "# wireproxy\n; too\nCheckAliveInterval = 3\n", true},
		{"[Socks5]", withLine("interface", "") + "[Socks5]\n", true},
		{"[http] with a comment", withLine("interface", "") + "[http] ; the proxy\n", true},
		{"[TCPClientTunnel]", "[tcpclienttunnel]\n", true},
		{"[TCPServerTunnel]", "[ TCPServerTunnel ]\n", true},
		{"[STDIOTunnel]", "[STDIOTunnel]\n", true},
		{"[UDPProxyTunnel]", "[UDPProxyTunnel]\n", true},
		{"CheckAlive only in [Interface]", withLine("interface", "CheckAlive = 1.1.1.1"), false},
		{"WGConfig inside a section", withLine("interface", "WGConfig = wg0.conf"), false},
		{"WGConfig commented out", "# WGConfig = wg0.conf\n" + fullConfig, false},
		{"unknown key at the top", "MTU = 1400\n" + fullConfig, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isWireproxy(splitLines([]byte(tt.text))); got != tt.want {
				t.Fatalf("isWireproxy = %v, want %v", got, tt.want)
			}
		})
	}
}

// A wg-quick file keeps wg-quick's rules: no $NAME, ';' is no comment, no
// default AllowedIPs, wireproxy's keys are unknown.
func TestWGQuickIsNotWireproxy(t *testing.T) {
	cfg, _, err := testOptions.Parse("wg0.conf", []byte(withLine("peer", "")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Wireproxy || !cfg.Frontends.IsZero() || len(cfg.Peers[0].AllowedIPs) != 1 {
		t.Errorf("Wireproxy %v, Frontends %+v, AllowedIPs %v", cfg.Wireproxy, cfg.Frontends, cfg.Peers[0].AllowedIPs)
	}
	cfg, _, err = testOptions.Parse("wg0.conf", []byte("[Interface]\nPrivateKey = "+privB64+"\nAddress = 10.0.0.2\n[Peer]\nPublicKey = "+pub1B64+"\nEndpoint = 192.0.2.1:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Peers[0].AllowedIPs) != 0 {
		t.Errorf("a wg-quick peer without AllowedIPs got %v", cfg.Peers[0].AllowedIPs)
	}
	for _, tt := range []struct{ line, key, msg string }{
		{"PrivateKey = $WG_KEY", "PrivateKey", "not a valid key"},                              // not substituted
		{"DNS = 10.0.0.1 ; 10.0.0.2", "DNS", `"10.0.0.1 ; 10.0.0.2" is neither an IP address`}, // ';' is no comment
		{"CheckAlive = 1.1.1.1", "CheckAlive", "unknown key in [Interface]"},
	} {
		_, _, err := testOptions.Parse("wg0.conf", []byte(withLine("interface", tt.line)))
		if err == nil || !strings.Contains(err.Error(), "wg0.conf:2: "+tt.key+": "+tt.msg) {
			t.Errorf("%s: err = %v, want line 2 %s: %s", tt.line, err, tt.key, tt.msg)
		}
	}
	text := strings.Replace(withLine("interface", ""), privB64, "$WG_KEY", 1)
	if _, _, err := testOptions.Parse("wg0.conf", []byte(text)); err == nil || !strings.Contains(err.Error(), "wg0.conf:3: PrivateKey: not a valid key") {
		t.Errorf("$WG_KEY in a wg-quick file: err = %v, want not a valid key", err)
	}
}

// proxyValue parses a wireproxy file whose [Socks5] has Password = value,
// and returns the password.
func proxyValue(t *testing.T, value string) (Password, error) {
	t.Helper()
	text := wgInline + "[Socks5]\nBindAddress = 127.0.0.1:1080\nUsername = u\nPassword = " + value + "\n"
	cfg, _, err := testOptions.Parse("wp.conf", []byte(text))
	if err != nil {
		return "", err
	}
	return cfg.Frontends.SOCKS5[0].Password, nil
}

func TestWireproxyValues(t *testing.T) {
	tests := []struct {
		value string
		want  Password
	}{
		{"$PROXY_PW", testPassword},
		{"${PROXY_PW}", testPassword},
		{"$$PROXY_PW", "$PROXY_PW"},
		{"$$", "$"},
		{"a$b", "a$b"}, // only a leading $ is special
		{`"$PROXY_PW"`, testPassword},
		{"`$$x`", "$x"},
		{"plain # comment", "plain"},
		{"plain;comment", "plain"},
		{"`a#b;c` ; comment", "a#b;c"},
		{`"""a "quoted" #word"""`, `a "quoted" #word`},
		{`'single'`, "single"},
		{`"unbalanced'`, `"unbalanced'`},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := proxyValue(t, tt.value)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("password %q, want %q", string(got), string(tt.want))
			}
		})
	}
}

// wireproxyWith is a valid wireproxy file with text added at its end, from
// line 9 on.
func wireproxyWith(text string) string { return wgInline + text }

func TestParseWireproxyErrors(t *testing.T) {
	socks := "[Socks5]\nBindAddress = 127.0.0.1:1080\n"
	tests := []struct {
		name    string
		text    string
		line    int
		key     string
		msgPart string
	}{
		{"unset variable", wireproxyWith(socks + "Username = u\nPassword = $NOPE\n"), 12, "Password", "environment variable $NOPE is not set"},
		{"unset variable in braces", wireproxyWith(socks + "Username = ${NOPE_2}\nPassword = x\n"), 11, "Username", "environment variable $NOPE_2 is not set"},
		{"bad variable name", wireproxyWith(socks + "Username = u\nPassword = $pa ss\n"), 12, "Password", "names an environment variable, $NAME or ${NAME}"},
		{"unclosed brace", wireproxyWith(socks + "Username = ${USER\nPassword = x\n"), 11, "Username", "write $$ for a literal $"},
		{"lone dollar", wireproxyWith(socks + "Username = $\nPassword = x\n"), 11, "Username", "names an environment variable"},
		{"empty variable", wireproxyWith(socks + "Username = $EMPTY\nPassword = x\n"), 11, "Username", "no value (the value came from $EMPTY)"},
		{"bad key from a variable", strings.Replace(wgInline, "$WG_KEY", "$PROXY_PW", 1) + socks, 2, "PrivateKey", "not a valid key (want 32 bytes in base64, 44 characters) (the value came from $PROXY_PW)"},
		{"bad address from a variable", strings.Replace(wgInline, "10.64.0.2/32", "$PROXY_PW", 1) + socks, 3, "Address", "$PROXY_PW's value is not an IP address"},
		{"STDIOTunnel", wireproxyWith("[STDIOTunnel]\nTarget = ssh.example.net:22\n"), 9, "[STDIOTunnel]", "warren does not support wireproxy's STDIOTunnel"},
		{"UDPProxyTunnel", wireproxyWith("[UDPProxyTunnel]\nBindAddress = 127.0.0.1:53\nTarget = 1.1.1.1:53\n"), 9, "[UDPProxyTunnel]", "does not support wireproxy's UDPProxyTunnel"},
		{"unknown section", wireproxyWith("[Socks4]\n" + socks), 9, "[Socks4]", "unknown section; a wireproxy config has [Interface], [Peer], [Socks5]"},
		{"unknown key in socks5", wireproxyWith(socks + "Port = 1\n"), 11, "Port", "unknown key in [Socks5], which has BindAddress"},
		{"unknown key in http", wireproxyWith("[http]\nBindAddress = 127.0.0.1:1\nTarget = x:1\n"), 11, "Target", "unknown key in [http]"},
		{"unknown key in client tunnel", wireproxyWith("[TCPClientTunnel]\nBindAddress = :1\nTarget = x:1\nListenPort = 1\n"), 12, "ListenPort", "unknown key in [TCPClientTunnel]"},
		{"unknown key in server tunnel", wireproxyWith("[TCPServerTunnel]\nBindAddress = :1\nTarget = x:1\nListenPort = 1\n"), 10, "BindAddress", "unknown key in [TCPServerTunnel]"},
		{"unknown key at the top", "Foo = 1\n" + wgInline + socks, 1, "Foo", "unknown key before the first section"},
		{"key twice", wireproxyWith(socks + "BindAddress = 127.0.0.1:1081\n"), 11, "BindAddress", "given twice in one section (first on line 10)"},
		{"WGConfig twice", "WGConfig = a.conf\nWGConfig = b.conf\n", 2, "WGConfig", "given twice"},
		{"socks5 without BindAddress", wireproxyWith("[Socks5]\nUsername = u\nPassword = p\n"), 9, "[Socks5]", "no BindAddress"},
		{"http without BindAddress", wireproxyWith("[http]\n"), 9, "[http]", "no BindAddress"},
		{"client tunnel without BindAddress", wireproxyWith("[TCPClientTunnel]\nTarget = x:1\n"), 9, "[TCPClientTunnel]", "no BindAddress"},
		{"client tunnel without Target", wireproxyWith("[TCPClientTunnel]\nBindAddress = :1\n"), 9, "[TCPClientTunnel]", "no Target"},
		{"server tunnel without ListenPort", wireproxyWith("[TCPServerTunnel]\nTarget = x:1\n"), 9, "[TCPServerTunnel]", "no ListenPort"},
		{"server tunnel without Target", wireproxyWith("[tcpservertunnel]\nListenPort = 1\n"), 9, "[tcpservertunnel]", "no Target"},
		{"missing key of the last section", wireproxyWith(socks + "[http]\n"), 11, "[http]", "no BindAddress"},
		{"username without password", wireproxyWith(socks + "Username = u\n"), 9, "[Socks5]", "a Username without a Password"},
		{"password without username", wireproxyWith("[http]\nBindAddress = :1\nPassword = p\n"), 9, "[http]", "a Password without a Username"},
		{"bind address without port", wireproxyWith("[Socks5]\nBindAddress = 127.0.0.1\n"), 10, "BindAddress", "want host:port"},
		{"bind address port 0", wireproxyWith("[Socks5]\nBindAddress = 127.0.0.1:0\n"), 10, "BindAddress", "port 0 would listen on a port picked at random"},
		{"bind address port too big", wireproxyWith("[http]\nBindAddress = 127.0.0.1:65536\n"), 10, "BindAddress", "from 1 to 65535"},
		{"bind address service name", wireproxyWith("[http]\nBindAddress = 127.0.0.1:http\n"), 10, "BindAddress", "want a port number"},
		{"bind address bad host", wireproxyWith("[TCPClientTunnel]\nBindAddress = bad_host:1\nTarget = x:1\n"), 10, "BindAddress", `"bad_host" is neither an IP address nor a host name`},
		{"target without port", wireproxyWith("[TCPClientTunnel]\nBindAddress = :1\nTarget = example.net\n"), 11, "Target", "want host:port"},
		{"target without host", wireproxyWith("[TCPClientTunnel]\nBindAddress = :1\nTarget = :80\n"), 11, "Target", "no host"},
		{"target port 0", wireproxyWith("[TCPServerTunnel]\nListenPort = 1\nTarget = localhost:0\n"), 11, "Target", "port 0 cannot be connected to"},
		{"target bad host", wireproxyWith("[TCPServerTunnel]\nListenPort = 1\nTarget = -x-:1\n"), 11, "Target", "neither an IP address nor a host name"},
		{"target in the tunnel with a zone", wireproxyWith("[TCPClientTunnel]\nBindAddress = :1\nTarget = [fe80::1%eth0]:22\n"), 11, "Target", "cannot have a zone"},
		{"listen port 0", wireproxyWith("[TCPServerTunnel]\nListenPort = 0\nTarget = x:1\n"), 10, "ListenPort", "from 1 to 65535"},
		{"listen port too big", wireproxyWith("[TCPServerTunnel]\nListenPort = 65536\nTarget = x:1\n"), 10, "ListenPort", "from 1 to 65535"},
		{"listen port not a number", wireproxyWith("[TCPServerTunnel]\nListenPort = ssh\nTarget = x:1\n"), 10, "ListenPort", "from 1 to 65535"},
		{"unclosed backquote", wireproxyWith(socks + "Username = `u\nPassword = p\n"), 11, "Username", "no closing `"},
		{"text after the closing quote", wireproxyWith(socks + "Username = `u` v\nPassword = p\n"), 11, "Username", "text after the closing `"},
		{"no interface", "[Socks5]\nBindAddress = :1\n", 0, "", "no [Interface] section, and no WGConfig"},
		{"peer still needs an endpoint", strings.Replace(wgInline, "Endpoint", "# Endpoint", 1) + socks, 0, "", "no [Peer] has an Endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := testOptions.Parse("wp.conf", []byte(tt.text))
			if err == nil {
				t.Fatalf("no error; config %+v", cfg)
			}
			if cfg != nil {
				t.Error("a config came back with the error")
			}
			found := findIssue(t, err, "wp.conf", tt.line, tt.key, tt.msgPart)
			prefix := "wp.conf: "
			if tt.line > 0 {
				prefix = fmt.Sprintf("wp.conf:%d: ", tt.line)
			}
			if s := found.Error(); !strings.HasPrefix(s, prefix) || strings.Contains(s, "\n") {
				t.Errorf("error text %q is not one line starting with %q", s, prefix)
			}
		})
	}
}

// findIssue returns the issue in err at file, line and key whose message
// has msgPart.
func findIssue(t *testing.T, err error, file string, line int, key, msgPart string) *Issue {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("error %T %v is not Errors", err, err)
	}
	for _, is := range errs {
		if is.File == file && is.Line == line && is.Key == key && strings.Contains(is.Msg, msgPart) {
			return is
		}
	}
	t.Fatalf("want an error in %s at line %d, key %q, saying %q; got:\n%v", file, line, key, msgPart, err)
	return nil
}

// wgFile is a wg-quick file for WGConfig, in wireproxy's dialect: its key
// from the environment, a ';' comment, and a peer without AllowedIPs.
const wgFile = `[Interface]
PrivateKey = $WG_KEY
Address = 10.64.0.2/32 ; the tunnel's address
DNS = 10.64.0.1
[Peer]
PublicKey = ` + pub1B64 + `
PresharedKey = ${PSK}
Endpoint = vpn.example.com:51820
`

func TestParseWireproxyWGConfig(t *testing.T) {
	inline, _, err := testOptions.Parse("inline.conf", []byte(wgInline+"[Socks5]\nBindAddress = :1\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, file, wgConfig, path string
	}{
		{"relative to the file's directory", "/etc/warren/wp.conf", "wg0.conf", "/etc/warren/wg0.conf"},
		{"relative, in a subdirectory", "conf/wp.conf", "wg/../wg0.conf", "conf/wg0.conf"},
		{"file in the working directory", "wp.conf", "wg0.conf", "wg0.conf"},
		{"absolute", "/etc/warren/wp.conf", "/srv/wg/wg0.conf", "/srv/wg/wg0.conf"},
		{"from the environment, quoted", "/etc/warren/wp.conf", `"$WGPATH" # comment`, "/srv/wg/wg0.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var read []string
			opts := ParseOptions{
				LookupEnv: func(name string) (string, bool) {
					if name == "WGPATH" {
						return "/srv/wg/wg0.conf", true
					}
					return lookupTestEnv(name)
				},
				ReadFile: func(path string) ([]byte, error) {
					read = append(read, path)
					return files(map[string]string{tt.path: wgFile})(path)
				},
			}
			text := "WGConfig = " + tt.wgConfig + "\n[Socks5]\nBindAddress = :1\n"
			cfg, warnings, err := opts.Parse(tt.file, []byte(text))
			if err != nil {
				t.Fatal(err)
			}
			if len(read) != 1 || read[0] != tt.path {
				t.Errorf("read %q, want only %q", read, tt.path)
			}
			if len(warnings) != 0 {
				t.Errorf("warnings %v", warnings)
			}
			if cfg.WGConfig != tt.path || cfg.Path != tt.file || !cfg.Wireproxy {
				t.Errorf("WGConfig %q, Path %q, Wireproxy %v", cfg.WGConfig, cfg.Path, cfg.Wireproxy)
			}
			// The same interface and peers as inline; the peer's line is
			// its line in the WGConfig file.
			if !reflect.DeepEqual(cfg.Interface, inline.Interface) || !reflect.DeepEqual(cfg.Peers, inline.Peers) || cfg.Peers[0].Line != 5 {
				t.Errorf("got  %s\nwant %s", unredacted(cfg), unredacted(inline))
			}
			if len(cfg.Frontends.SOCKS5) != 1 || cfg.Frontends.SOCKS5[0].Line != 2 {
				t.Errorf("Frontends %+v", cfg.Frontends)
			}
		})
	}
}

func TestParseWireproxyWGConfigErrors(t *testing.T) {
	bad := strings.Replace(wgFile, "10.64.0.2/32", "10.64.0.300", 1)
	bad = strings.Replace(bad, "[Peer]", "[Peer]\nListenPort = 1", 1)
	fsys := map[string]string{
		"wg0.conf":    wgFile,
		"bad.conf":    bad,
		"socks.conf":  wgFile + "[Socks5]\nBindAddress = :1\n",
		"top.conf":    "CheckAlive = 1.1.1.1\n" + wgFile,
		"empty.conf":  "",
		"large.conf":  strings.Repeat("#", MaxFileSize+1),
		"nopeer.conf": wgFile[:strings.Index(wgFile, "[Peer]")],
	}
	opts := ParseOptions{LookupEnv: lookupTestEnv, ReadFile: files(fsys)}
	tests := []struct {
		name    string
		text    string
		file    string
		line    int
		key     string
		msgPart string
	}{
		{"errors name the WGConfig file", "WGConfig = bad.conf\n", "bad.conf", 3, "Address", `"10.64.0.300" is not an IP address`},
		{"every error of the WGConfig file", "WGConfig = bad.conf\n", "bad.conf", 6, "ListenPort", "unknown key in [Peer]"},
		{"missing file", "WGConfig = nope.conf\n", "wp.conf", 1, "WGConfig", "cannot read nope.conf: no such file"},
		{"empty value", "WGConfig =\n[Socks5]\nBindAddress = :1\n", "wp.conf", 1, "WGConfig", "no value"},
		{"unset variable", "WGConfig = $NOPE\n", "wp.conf", 1, "WGConfig", "$NOPE is not set"},
		{"missing file from a variable", "WGConfig = $PROXY_PW\n", "wp.conf", 1, "WGConfig", "cannot read the file $PROXY_PW names: no such file"},
		{"inline [Interface] too", "WGConfig = wg0.conf\n" + wgInline, "wp.conf", 2, "[Interface]", "the interface and peers come from the file WGConfig names (line 1)"},
		{"inline [Peer] too", "WGConfig = wg0.conf\n[peer]\nPublicKey = " + pub2B64 + "\n", "wp.conf", 2, "[peer]", "not both"},
		{"listener in the WGConfig file", "WGConfig = socks.conf\n", "socks.conf", 9, "[Socks5]", "[Socks5] goes in the wireproxy config"},
		{"top-level key in the WGConfig file", "WGConfig = top.conf\n", "top.conf", 1, "CheckAlive", "outside a section"},
		{"empty WGConfig file", "WGConfig = empty.conf\n", "empty.conf", 0, "", "no [Interface] section"},
		{"WGConfig file without a peer", "WGConfig = nopeer.conf\n", "nopeer.conf", 0, "", "no [Peer] section"},
		{"WGConfig file too large", "WGConfig = large.conf\n", "large.conf", 0, "", "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := opts.Parse("wp.conf", []byte(tt.text))
			if err == nil {
				t.Fatalf("no error; config %+v", cfg)
			}
			findIssue(t, err, tt.file, tt.line, tt.key, tt.msgPart)
			if strings.Contains(err.Error(), "wp.conf: no [Interface]") {
				t.Errorf("a WGConfig file also gives an error about the missing inline [Interface]:\n%v", err)
			}
		})
	}
	// The wireproxy file's errors come first, then the WGConfig file's.
	_, _, err := opts.Parse("wp.conf", []byte("WGConfig = bad.conf\n[Socks5]\nBindAddress = 1\n"))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v", err)
	}
	var got []string
	for _, is := range errs {
		got = append(got, fmt.Sprintf("%s:%d", is.File, is.Line))
	}
	if want := []string{"wp.conf:3", "bad.conf:1", "bad.conf:3", "bad.conf:6"}; !reflect.DeepEqual(got, want) {
		t.Errorf("errors at %v, want %v:\n%v", got, want, err)
	}
}

// No error or warning shows a key, a password, or the value of an
// environment variable.
func TestWireproxySecretsNeverShown(t *testing.T) {
	secrets := []string{privB64, pskB64, testPassword, "p#ss;word", "hunter2"}
	texts := []string{
		fullWireproxy,
		strings.Replace(fullWireproxy, "$WG_KEY", "$PROXY_PW", 1),                             // a password as a key
		strings.Replace(fullWireproxy, "10.64.0.2/32", "$PROXY_PW", 1),                        // as an address
		strings.Replace(fullWireproxy, "10.64.0.1", "$PROXY_PW", 1),                           // as DNS
		strings.Replace(fullWireproxy, "vpn.example.com:51820", "$PROXY_PW:1", 1),             // not a whole value
		strings.Replace(fullWireproxy, "vpn.example.com:51820", "$PROXY_PW", 1),               // as an endpoint
		strings.Replace(fullWireproxy, "play.example.net:25565", "$PROXY_PW", 1),              // as a target
		strings.Replace(fullWireproxy, "127.0.0.1:25344", "$PROXY_PW", 1),                     // as a bind address
		strings.Replace(fullWireproxy, "3422", "$PROXY_PW", 1),                                // as a port
		strings.Replace(fullWireproxy, "username = alice\n", "", 1),                           // password without user
		strings.Replace(fullWireproxy, "$PROXY_PW", "$"+testPassword, 1),                      // a bad name
		strings.Replace(fullWireproxy, "`p#ss;word`", "`p#ss;word", 1),                        // unclosed quote
		strings.Replace(fullWireproxy, "`p#ss;word`", "`p#ss;word` hunter2", 1),               // text after it
		strings.Replace(fullWireproxy, "Password = `", "Password = hunter2\nPassword = `", 1), // twice
		strings.Replace(fullWireproxy, "Password = `", "Passwd = hunter2\nPassword = `", 1),   // unknown key
		strings.Replace(fullWireproxy, "[HTTP]", "[STDIOTunnel]\nPassword = hunter2\n[HTTP]", 1),
		strings.Replace(fullWireproxy, "$WG_KEY", privB64+"x", 1),
		strings.Replace(fullWireproxy, "${PSK}", "hunter2", 1),
	}
	for i, text := range texts {
		cfg, warnings, err := testOptions.Parse("wp.conf", []byte(text))
		if i > 0 && err == nil {
			t.Errorf("text %d: no error", i)
		}
		var shown []string
		if err != nil {
			shown = append(shown, err.Error())
		}
		for _, w := range warnings {
			shown = append(shown, w.Error())
		}
		if cfg != nil {
			shown = append(shown, fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg))
			for _, l := range append(cfg.Frontends.SOCKS5, cfg.Frontends.HTTP...) {
				shown = append(shown, fmt.Sprintf("%v %+v %#v %s", l, l, l, l.Password))
			}
		}
		for _, s := range shown {
			for _, secret := range secrets {
				if strings.Contains(s, secret) {
					t.Errorf("text %d: secret %q shows in %q", i, secret, s)
				}
			}
		}
	}
}

// Load and Parse read the WGConfig file from the file system, and warn, as
// for the config itself, when its group or others can read a secret in it.
func TestLoadWireproxy(t *testing.T) {
	t.Setenv("WARREN_TEST_PROXY_PW", testPassword)
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secretWG := strings.Replace(strings.Replace(wgFile, "$WG_KEY", privB64, 1), "${PSK}", pskB64, 1)
	wgOpen := write("open.conf", secretWG, 0o644)
	write("private.conf", secretWG, 0o600)
	// A WGConfig file whose secrets come from the environment holds none.
	write("env.conf", wgFile, 0o644)
	t.Setenv("WG_KEY", privB64)
	t.Setenv("PSK", pskB64)
	noKey := strings.Replace(secretWG, "PresharedKey = "+pskB64+"\n", "", 1)

	tests := []struct {
		name, text string
		mode       os.FileMode
		warnings   []string // each warning's start
	}{
		{"private files", "WGConfig = private.conf\n", 0o644, nil},
		{"open WGConfig file", "WGConfig = open.conf\n", 0o600, []string{wgOpen + ": readable by group or others (mode 0644), and it holds a private key: chmod 600 " + wgOpen}},
		{"WGConfig by its absolute path", "WGConfig = " + wgOpen + "\n", 0o600, []string{wgOpen + ": readable by group or others"}},
		{"open file holding a password", "WGConfig = private.conf\n[http]\nBindAddress = :1\nUsername = u\nPassword = hunter2\n", 0o640, []string{"MAIN: readable by group or others (mode 0640), and it holds a proxy password"}},
		{"open file with a password from the environment", "WGConfig = private.conf\n[http]\nBindAddress = :1\nUsername = u\nPassword = $WARREN_TEST_PROXY_PW\n", 0o644, nil},
		{"open file with an inline key", noKey + "[Socks5]\nBindAddress = :1\n", 0o604, []string{"MAIN: readable by group or others (mode 0604), and it holds a private key"}},
		{"open WGConfig file without secrets", "WGConfig = env.conf\n", 0o644, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			main := write(fmt.Sprintf("wp%d.conf", i), tt.text, tt.mode)
			cfg, warnings, err := Load(main)
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) != len(tt.warnings) {
				t.Fatalf("warnings %v, want %d", warnings, len(tt.warnings))
			}
			for j, w := range warnings {
				want := strings.Replace(tt.warnings[j], "MAIN", main, 1)
				if !strings.HasPrefix(w.Error(), want) {
					t.Errorf("warning %q, want it to start %q", w.Error(), want)
				}
			}
			if !cfg.Wireproxy || cfg.Interface.PrivateKey != PrivateKey(key(t, privB64)) {
				t.Errorf("Wireproxy %v, or the wrong key", cfg.Wireproxy)
			}
			// Parse reads WGConfig the same way, from the config's directory.
			data, _ := os.ReadFile(main)
			cfg2, warnings2, err := Parse(main, data)
			if err != nil || !reflect.DeepEqual(cfg, cfg2) {
				t.Errorf("Parse: %v; config differs from Load's: %v", err, !reflect.DeepEqual(cfg, cfg2))
			}
			// and warns as Load does, but for the config's own mode.
			var loadWarnings []*Issue
			for _, w := range warnings {
				if w.File != main {
					loadWarnings = append(loadWarnings, w)
				}
			}
			if !reflect.DeepEqual(warnings2, loadWarnings) {
				t.Errorf("Parse warnings %v, want %v", warnings2, loadWarnings)
			}
		})
	}
}
