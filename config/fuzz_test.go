package config

import (
	"bytes"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fuzzSecret is the value of most environment variables in FuzzParse: it
// must never show in a message unless the input itself holds it.
const fuzzSecret = "Zq7fuzzSecretXw"

// fuzzPlanted stands for a secret written out in a config: in the value of
// a PrivateKey, PresharedKey or Password key, it must never show in a
// message.
const fuzzPlanted = "Zq7plantedSecretXw"

// plantedSecret reports whether data holds fuzzPlanted once, in the value
// of a secret's key.
func plantedSecret(data []byte) bool {
	if bytes.Count(data, []byte(fuzzPlanted)) != 1 {
		return false
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		key, value, ok := strings.Cut(line, "=")
		if !ok || !strings.Contains(value, fuzzPlanted) {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(key)) {
		case "privatekey", "presharedkey", "password":
			return true
		}
	}
	return false
}

// fuzzOptions keep FuzzParse pure: a fixed environment, and a file system
// with wg0.conf (a WGConfig file) and self.conf (the input itself, read as
// a WGConfig file).
func fuzzOptions(data []byte) ParseOptions {
	return ParseOptions{
		LookupEnv: func(name string) (string, bool) {
			switch {
			case strings.HasPrefix(name, "K"):
				return privB64, true
			case strings.HasPrefix(name, "U"):
				return "", false
			case strings.HasPrefix(name, "E"):
				return "", true
			}
			return fuzzSecret, true
		},
		ReadFile: func(path string) ([]byte, error) {
			switch filepath.Base(path) {
			case "wg0.conf":
				return []byte(wgFuzzFile), nil
			case "self.conf":
				return data, nil
			}
			return nil, fs.ErrNotExist
		},
	}
}

const wgFuzzFile = "[Interface]\nPrivateKey = $KEY\nAddress = 10.0.0.2\n[Peer]\nPublicKey = " + pub1B64 + "\nEndpoint = 192.0.2.1:51820\n"

// FuzzParse: Parse never panics and gives the same result every time, a
// config it accepts holds what the package promises, and no message shows
// an environment variable's value or a secret written out.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullConfig))
	f.Add([]byte(withLine("interface", "")))
	f.Add([]byte("[Interface]\nPrivateKey=" + privB64 + "\nAddress=fd00::2\nMTU=1280\n[Peer]\nPublicKey=" + pub1B64 + "\nEndpoint=[::1]:1\n"))
	f.Add([]byte(fullWireproxy))
	f.Add([]byte("WGConfig = wg0.conf\n[socks5]\nbindaddress = :1080\n[HTTP]\nBindAddress = 127.0.0.1:8118\nUsername = $USER\nPassword = ${PW}\n"))
	f.Add([]byte("WGConfig = self.conf\n[Interface]\nPrivateKey = $KEY\n[Peer]\nAllowedIPs = $CIDR\n[TCPServerTunnel]\nListenPort = 22\nTarget = `[fe80::1%eth0]:22`\n"))
	f.Add([]byte("CheckAlive = 1.1.1.1\n" + wgFuzzFile + "[TCPClientTunnel]\nBindAddress = \"[::1]:25565\" ; x\nTarget = $$x:1\n[STDIOTunnel]\nTarget = a:1\n"))
	f.Add([]byte("[Interface]\nPrivateKey = " + fuzzPlanted + "\nAddress = 10.0.0.2\n[Peer]\nPublicKey = " + pub1B64 + "\nPresharedKey = x\nEndpoint = a:1\n"))
	f.Add([]byte("[Interface]\nPrivateKey = " + privB64 + "\n[Peer]\nPresharedKey = \"" + fuzzPlanted + "\"\n"))
	f.Add([]byte("WGConfig = wg0.conf\n[Socks5]\nBindAddress = :1080\nPassword = '" + fuzzPlanted + "' ; no user\n[http]\nBindAddress = :1\nUsername = u\nPassword = `p\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, warnings, err := fuzzOptions(data).Parse("fuzz.conf", data)
		var shown []string
		for _, w := range warnings {
			shown = append(shown, w.Error())
		}
		if err != nil {
			shown = append(shown, err.Error())
		}
		if !bytes.Contains(data, []byte(fuzzSecret)) {
			for _, s := range shown {
				if strings.Contains(s, fuzzSecret) {
					t.Fatalf("a variable's value shows in %q", s)
				}
			}
		}
		if plantedSecret(data) {
			for _, s := range shown {
				if strings.Contains(s, fuzzPlanted) {
					t.Fatalf("a secret written out shows in %q", s)
				}
			}
		}
		cfg2, warnings2, err2 := fuzzOptions(data).Parse("fuzz.conf", data)
		if !reflect.DeepEqual(cfg, cfg2) || fmt.Sprint(warnings) != fmt.Sprint(warnings2) || fmt.Sprint(err) != fmt.Sprint(err2) {
			t.Fatalf("parsed twice, two results:\n%+v %v %v\n%+v %v %v", cfg, warnings, err, cfg2, warnings2, err2)
		}
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		if len(cfg.Interface.Addresses) == 0 || len(cfg.Peers) == 0 {
			t.Fatalf("accepted without addresses or peers: %+v", cfg)
		}
		if cfg.Interface.MTU < minMTU || cfg.Interface.MTU > maxMTU {
			t.Fatalf("MTU %d", cfg.Interface.MTU)
		}
		endpoint := false
		for _, p := range cfg.Peers {
			if p.PublicKey == (PublicKey{}) {
				t.Fatal("peer without a public key")
			}
			if !p.Endpoint.IsZero() {
				endpoint = true
				if p.Endpoint.Port == 0 {
					t.Fatal("endpoint with port 0")
				}
			}
			if cfg.Wireproxy && len(p.AllowedIPs) == 0 {
				t.Fatal("a wireproxy peer without AllowedIPs")
			}
			for _, a := range p.AllowedIPs {
				if a != a.Masked() {
					t.Fatalf("AllowedIPs %v not masked", a)
				}
			}
		}
		if !endpoint {
			t.Fatal("accepted with no endpoint")
		}
		checkFrontends(t, cfg)
	})
}

// checkFrontends checks what Frontends promises.
func checkFrontends(t *testing.T, cfg *Config) {
	fe := cfg.Frontends
	if !cfg.Wireproxy && (!fe.IsZero() || cfg.WGConfig != "") {
		t.Fatalf("a wg-quick config with wireproxy's parts: %+v", cfg)
	}
	hostPort := func(s string, listen bool) {
		t.Helper()
		host, port, ok := splitHostPortForTest(s)
		if !ok || port == 0 || (host == "" && !listen) {
			t.Fatalf("%q accepted as host:port", s)
		}
	}
	for _, l := range append(append([]ProxyListener(nil), fe.SOCKS5...), fe.HTTP...) {
		hostPort(l.BindAddress, true)
		if (l.Username == "") != (l.Password == "") || l.Line == 0 {
			t.Fatalf("listener %+v", l)
		}
	}
	for _, f := range fe.Forwards {
		hostPort(f.BindAddress, true)
		hostPort(f.Target, false)
	}
	for _, e := range fe.Exposes {
		hostPort(e.Target, false)
		if e.ListenPort == 0 {
			t.Fatal("ListenPort 0")
		}
	}
}

func splitHostPortForTest(s string) (host string, port uint16, ok bool) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, false
	}
	n, err := strconv.ParseUint(p, 10, 16)
	return host, uint16(n), err == nil
}
