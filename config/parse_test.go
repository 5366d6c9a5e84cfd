package config

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Keys from wg(8)'s examples.
const (
	privB64 = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	pub1B64 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	pub2B64 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
	pskB64  = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
)

func key(t *testing.T, b64 string) [KeyLen]byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != KeyLen {
		t.Fatalf("bad test key %q", b64)
	}
	return [KeyLen]byte(b)
}

const fullConfig = `# a comment
[Interface]
PrivateKey = ` + privB64 + `
Address = 10.64.0.2/32, fd00:64::2
Address = 192.168.7.9/24
DNS = 10.64.0.1, 2001:db8::53
MTU = 1380
ListenPort = 51821

[Peer]  # the main one
PublicKey = ` + pub1B64 + `
PresharedKey = ` + pskB64 + `
Endpoint = [2001:db8::1]:51820
AllowedIPs = 0.0.0.0/0
AllowedIPs = ::/0, 10.1.2.3/16
PersistentKeepalive = 25

[peer]
publickey = ` + pub2B64 + `
endpoint = vpn.example.com:443
allowedips = 10.9.0.0/24
persistentkeepalive = off
`

func TestParseFull(t *testing.T) {
	cfg, warnings, err := Parse("wg0.conf", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	want := &Config{
		Path: "wg0.conf",
		Interface: Interface{
			PrivateKey: PrivateKey(key(t, privB64)),
			Addresses:  []netip.Prefix{pfx("10.64.0.2/32"), pfx("fd00:64::2/128"), pfx("192.168.7.9/24")},
			DNS:        []netip.Addr{addr("10.64.0.1"), addr("2001:db8::53")},
			MTU:        1380,
			ListenPort: 51821,
		},
		Peers: []Peer{
			{
				PublicKey:           PublicKey(key(t, pub1B64)),
				PresharedKey:        PresharedKey(key(t, pskB64)),
				Endpoint:            Endpoint{Host: "2001:db8::1", Port: 51820},
				AllowedIPs:          []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0"), pfx("10.1.0.0/16")},
				PersistentKeepalive: 25 * time.Second,
				Line:                10,
			},
			{
				PublicKey:  PublicKey(key(t, pub2B64)),
				Endpoint:   Endpoint{Host: "vpn.example.com", Port: 443},
				AllowedIPs: []netip.Prefix{pfx("10.9.0.0/24")},
				Line:       18,
			},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %s\nwant %s", unredacted(cfg), unredacted(want))
	}
	if got := cfg.Peers[0].Endpoint.String(); got != "[2001:db8::1]:51820" {
		t.Errorf("Endpoint.String() = %q", got)
	}
	if _, ok := cfg.Peers[1].Endpoint.Addr(); ok {
		t.Errorf("a host name endpoint has an Addr")
	}
}

// unredacted shows a config with its secret keys, so that tests can compare
// them; %#v of a Config itself hides them.
func unredacted(c *Config) string {
	s := fmt.Sprintf("%#v priv=%x", *c, c.Interface.PrivateKey[:])
	for _, p := range c.Peers {
		s += fmt.Sprintf(" psk=%x", p.PresharedKey[:])
	}
	return s
}

func TestParseDefaults(t *testing.T) {
	cfg, _, err := Parse("min.conf", []byte("[Interface]\nPrivateKey="+privB64+"\nAddress=10.0.0.2\n[Peer]\nPublicKey="+pub1B64+"\nEndpoint=192.0.2.1:51820\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Interface.MTU != DefaultMTU || cfg.Interface.ListenPort != 0 || cfg.Peers[0].PersistentKeepalive != 0 {
		t.Errorf("defaults: MTU %d, ListenPort %d, keepalive %v", cfg.Interface.MTU, cfg.Interface.ListenPort, cfg.Peers[0].PersistentKeepalive)
	}
	if !cfg.Peers[0].PresharedKey.IsZero() {
		t.Error("a preshared key appeared")
	}
	if got := cfg.Interface.Addresses[0]; got != netip.MustParsePrefix("10.0.0.2/32") {
		t.Errorf("address without prefix: %v", got)
	}
}

// CRLF line endings and a byte order mark, as editors on other systems write.
func TestParseCRLFAndBOM(t *testing.T) {
	text := "\xef\xbb\xbf[Interface]\r\nPrivateKey = " + privB64 + "\r\nAddress = 10.0.0.2/32\r\n[Peer]\r\nPublicKey = " + pub1B64 + "\r\nEndpoint = 192.0.2.1:51820\r\n"
	if _, _, err := Parse("win.conf", []byte(text)); err != nil {
		t.Fatal(err)
	}
}

// base is a valid config; tests put one bad line in it at line 3.
func withLine(section, line string) string {
	iface := "[Interface]\nPrivateKey = " + privB64 + "\nAddress = 10.0.0.2/32\n"
	peer := "[Peer]\nPublicKey = " + pub1B64 + "\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0\n"
	if section == "peer" {
		return peer[:strings.Index(peer, "\n")+1] + line + "\n" + peer[strings.Index(peer, "\n")+1:] + iface
	}
	return iface[:strings.Index(iface, "\n")+1] + line + "\n" + iface[strings.Index(iface, "\n")+1:] + peer
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		line    int
		key     string
		msgPart string
	}{
		{"bad private key", withLine("interface", "PrivateKey = notakey"), 2, "PrivateKey", "not a valid key"},
		{"short private key", strings.Replace(withLine("interface", ""), privB64, "AAAA", 1), 3, "PrivateKey", "not a valid key"},
		{"bad public key", withLine("peer", "PublicKey = "+pub1B64[:40]+"===="), 2, "PublicKey", "not a valid key"},
		{"bad preshared key", withLine("peer", "PresharedKey = !!!!"), 2, "PresharedKey", "not a valid key"},
		{"unknown key", withLine("interface", "Jc = 4"), 2, "Jc", "unknown key in [Interface]"},
		{"unknown peer key", withLine("peer", "MTU = 1400"), 2, "MTU", "unknown key in [Peer]"},
		{"unknown section", "[Wat]\n" + withLine("interface", ""), 1, "[Wat]", "unknown section"},
		{"unclosed section", "[Interface\n" + withLine("interface", ""), 1, "[Interface", "missing ']'"},
		{"duplicate interface", withLine("interface", "") + "[Interface]\nPrivateKey = " + privB64 + "\n", 9, "[Interface]", "a second [Interface] section (the first is on line 1)"},
		{"key twice", withLine("interface", "PrivateKey = "+privB64), 3, "PrivateKey", "given twice in one section (first on line 2)"},
		{"no equals", withLine("interface", "Address 10.0.0.3"), 2, "", "not a section header or key = value"},
		{"empty value", withLine("interface", "DNS ="), 2, "DNS", "no value"},
		{"key outside section", "MTU = 1400\n" + withLine("interface", ""), 1, "MTU", "outside a section"},
		{"bad address", withLine("interface", "Address = 10.0.0.300"), 2, "Address", `"10.0.0.300" is not an IP address`},
		{"bad prefix", withLine("interface", "Address = 10.0.0.3/33"), 2, "Address", "prefix length"},
		{"empty list item", withLine("interface", "Address = 10.0.0.3,,10.0.0.4"), 2, "Address", "empty item"},
		{"bad dns", withLine("interface", "DNS = 10.0.0.1, -bad-"), 2, "DNS", "neither an IP address nor a search domain"},
		{"mtu not a number", withLine("interface", "MTU = big"), 2, "MTU", "from 576 to 65535"},
		{"mtu too small", withLine("interface", "MTU = 100"), 2, "MTU", "from 576 to 65535"},
		{"mtu too small for ipv6", withLine("interface", "MTU = 1000\nAddress = fd00::2"), 2, "MTU", "IPv6 tunnel needs an MTU of at least 1280"},
		{"listen port", withLine("interface", "ListenPort = 70000"), 2, "ListenPort", "from 0 to 65535"},
		{"endpoint without port", withLine("peer", "Endpoint = 192.0.2.1"), 2, "Endpoint", "want host:port"},
		{"endpoint ipv6 without brackets", withLine("peer", "Endpoint = 2001:db8::1:51820"), 2, "Endpoint", "want host:port"},
		{"endpoint port 0", withLine("peer", "Endpoint = 192.0.2.1:0"), 2, "Endpoint", "from 1 to 65535"},
		{"endpoint bad host", withLine("peer", "Endpoint = bad_host!:51820"), 2, "Endpoint", "neither an IP address nor a host name"},
		{"bad allowed ips", withLine("peer", "AllowedIPs = 10.0.0.0/40"), 2, "AllowedIPs", "prefix length"},
		{"bad keepalive", withLine("peer", "PersistentKeepalive = sometimes"), 2, "PersistentKeepalive", `want "off" or seconds`},
		{"no interface", "[Peer]\nPublicKey = " + pub1B64 + "\nEndpoint = 192.0.2.1:51820\n", 0, "", "no [Interface] section"},
		{"no peer", "[Interface]\nPrivateKey = " + privB64 + "\nAddress = 10.0.0.2\n", 0, "", "no [Peer] section"},
		{"no private key", "[Interface]\nAddress = 10.0.0.2\n[Peer]\nPublicKey = " + pub1B64 + "\nEndpoint = 192.0.2.1:1\n", 1, "[Interface]", "no PrivateKey"},
		{"no address", "[Interface]\nPrivateKey = " + privB64 + "\n[Peer]\nPublicKey = " + pub1B64 + "\nEndpoint = 192.0.2.1:1\n", 1, "[Interface]", "no Address"},
		{"peer without public key", withLine("interface", "") + "[Peer]\nEndpoint = 192.0.2.9:1\n", 9, "[Peer]", "no PublicKey"},
		{"duplicate peer", withLine("interface", "") + "[Peer]\nPublicKey = " + pub1B64 + "\n", 9, "[Peer]", "same PublicKey as the peer on line 5"},
		{"no endpoint", "[Interface]\nPrivateKey = " + privB64 + "\nAddress = 10.0.0.2\n[Peer]\nPublicKey = " + pub1B64 + "\n", 0, "", "no [Peer] has an Endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := Parse("wg0.conf", []byte(tt.text))
			if err == nil {
				t.Fatalf("no error; config %+v", cfg)
			}
			if cfg != nil {
				t.Error("a config came back with the error")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not Errors", err, err)
			}
			var found *Issue
			for _, is := range errs {
				if is.Line == tt.line && is.Key == tt.key && strings.Contains(is.Msg, tt.msgPart) {
					found = is
				}
			}
			if found == nil {
				t.Fatalf("want an error at line %d, key %q, saying %q; got:\n%v", tt.line, tt.key, tt.msgPart, err)
			}
			prefix := "wg0.conf: "
			if tt.line > 0 {
				prefix = fmt.Sprintf("wg0.conf:%d: ", tt.line)
			}
			if s := found.Error(); !strings.HasPrefix(s, prefix) || strings.Contains(s, "\n") {
				t.Errorf("error text %q is not one line starting with %q", s, prefix)
			}
		})
	}
}

// A peer whose public key is the interface's own is a mistake.
func TestParseOwnKeyAsPeer(t *testing.T) {
	own := PrivateKey(key(t, privB64)).PublicKey()
	text := "[Interface]\nPrivateKey = " + privB64 + "\nAddress = 10.0.0.2\n[Peer]\nPublicKey = " + own.String() + "\nEndpoint = 192.0.2.1:1\n"
	_, _, err := Parse("wg0.conf", []byte(text))
	if err == nil || !strings.Contains(err.Error(), "wg0.conf:4: [Peer]: its PublicKey is this interface's own public key") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseReportsEveryErrorInLineOrder(t *testing.T) {
	text := "[Interface]\nPrivateKey = bad\nAddress = 10.0.0.300\nMTU = 5\n[Peer]\nPublicKey = " + pub1B64 + "\nFoo = 1\n"
	_, _, err := Parse("wg0.conf", []byte(text))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("err = %v", err)
	}
	var got []string
	for _, is := range errs {
		got = append(got, fmt.Sprintf("%d:%s", is.Line, is.Key))
	}
	// The two [Interface] issues (no PrivateKey, no Address) are found
	// after the lines; sorting is by line, whole-file issues last.
	want := []string{"1:[Interface]", "1:[Interface]", "2:PrivateKey", "3:Address", "4:MTU", "7:Foo", "0:"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("errors %v, want %v:\n%v", got, want, err)
	}
}

func TestParseWarnings(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		key     string
		msgPart string
	}{
		{"PostUp", "PostUp = iptables -A FORWARD -i %i -j ACCEPT", "PostUp", "ignored: PostUp has no meaning for warren"},
		{"Table", "Table = off", "Table", "ignored: Table"},
		{"SaveConfig", "SaveConfig = true", "SaveConfig", "ignored"},
		{"FwMark", "FwMark = 0xca6c", "FwMark", "ignored"},
		{"PreDown lower case", "predown = echo", "predown", "ignored: PreDown"},
		{"search domain", "DNS = 10.0.0.1, corp.example", "DNS", `search domain "corp.example" ignored`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warnings, err := Parse("wg0.conf", []byte(withLine("interface", tt.line)))
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) != 1 {
				t.Fatalf("warnings %v, want one", warnings)
			}
			w := warnings[0]
			if w.Line != 2 || w.Key != tt.key || !strings.Contains(w.Msg, tt.msgPart) {
				t.Fatalf("warning %q, want line 2, key %q, saying %q", w.Error(), tt.key, tt.msgPart)
			}
			if tt.name == "search domain" && (len(cfg.Interface.DNS) != 1 || cfg.Interface.DNS[0] != netip.MustParseAddr("10.0.0.1")) {
				t.Errorf("DNS %v, want only the IP", cfg.Interface.DNS)
			}
		})
	}
}

// No error, warning or formatted config ever shows a secret key, in base64
// or in hex.
func TestSecretsNeverShown(t *testing.T) {
	secrets := []string{privB64, pskB64}
	var forms []string
	for _, s := range secrets {
		b, _ := base64.StdEncoding.DecodeString(s)
		forms = append(forms, s, s[:20], hex.EncodeToString(b), fmt.Sprint(b), string(b))
	}
	texts := []string{
		fullConfig,
		strings.Replace(fullConfig, privB64, privB64[:43], 1),                // truncated
		strings.Replace(fullConfig, pskB64, pskB64+"AAAA", 1),                // too long
		strings.Replace(fullConfig, "PrivateKey = ", "PrivateKey = x", 1),    // garbage
		strings.Replace(fullConfig, "MTU = 1380", "PrivateKey = "+pskB64, 1), // twice
		fullConfig + "PresharedKey = " + privB64 + "\n",                      // twice in a peer
		strings.Replace(fullConfig, "[Interface]", "[Interfaces]", 1),        // skipped section
		strings.Replace(fullConfig, "PrivateKey", "PrivatKey", 1),            // unknown key
	}
	for i, text := range texts {
		cfg, warnings, err := Parse("wg0.conf", []byte(text))
		var shown []string
		if err != nil {
			shown = append(shown, err.Error())
		}
		for _, w := range warnings {
			shown = append(shown, w.Error())
		}
		if cfg != nil {
			shown = append(shown, fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.Interface.PrivateKey))
			for _, p := range cfg.Peers {
				shown = append(shown, fmt.Sprintf("%v %+v %#v", p, p, p.PresharedKey))
			}
		}
		for _, s := range shown {
			for _, f := range forms {
				if strings.Contains(s, f) {
					t.Errorf("text %d: a secret key shows in %q", i, s)
				}
			}
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(fullConfig), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	private := write("private.conf", 0o600)
	cfg, warnings, err := Load(private)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("0600 file: %v %v", warnings, err)
	}
	if cfg.Path != private {
		t.Errorf("Path %q", cfg.Path)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		p := write(fmt.Sprintf("open-%o.conf", mode), mode)
		_, warnings, err := Load(p)
		if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0].Error(), "readable by group or others") || !strings.HasPrefix(warnings[0].Error(), p+": ") {
			t.Errorf("mode %04o: warnings %v, err %v", mode, warnings, err)
		}
	}
}

func TestLoadUnreadable(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, path, msg string
	}{
		{"missing", filepath.Join(dir, "nope.conf"), "no such file"},
		{"directory", dir, "is a directory"},
	}
	if os.Geteuid() != 0 { // root reads a file of mode 000
		p := filepath.Join(dir, "locked.conf")
		os.WriteFile(p, []byte(fullConfig), 0)
		tests = append(tests, struct{ name, path, msg string }{"no permission", p, "permission denied"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Load(tt.path)
			if err == nil {
				t.Fatal("no error")
			}
			if s := err.Error(); !strings.HasPrefix(s, tt.path+": ") || !strings.Contains(s, tt.msg) || strings.Contains(s, "\n") {
				t.Fatalf("error %q: want one line naming %s and saying %q", s, tt.path, tt.msg)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	_, _, err := Parse("big.conf", make([]byte, MaxFileSize+1))
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
}

// RFC 7748 section 6.1: Alice's key pair.
func TestPublicKey(t *testing.T) {
	var priv PrivateKey
	hex.Decode(priv[:], []byte("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	want := "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
	if got := priv.PublicKey(); hex.EncodeToString(got[:]) != want {
		t.Fatalf("public key %x, want %s", got, want)
	}
	k, err := NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if k == (PrivateKey{}) || k[0]&7 != 0 || k[31]&0xc0 != 0x40 {
		t.Fatalf("NewPrivateKey is not a clamped key")
	}
}
