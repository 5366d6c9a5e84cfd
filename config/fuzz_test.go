package config

import "testing"

// FuzzParse: Parse never panics, and a config it accepts holds what the
// package promises.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullConfig))
	f.Add([]byte(withLine("interface", "")))
	f.Add([]byte("[Interface]\nPrivateKey=" + privB64 + "\nAddress=fd00::2\nMTU=1280\n[Peer]\nPublicKey=" + pub1B64 + "\nEndpoint=[::1]:1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, warnings, err := Parse("fuzz.conf", data)
		for _, w := range warnings {
			_ = w.Error()
		}
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			_ = err.Error()
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
			for _, a := range p.AllowedIPs {
				if a != a.Masked() {
					t.Fatalf("AllowedIPs %v not masked", a)
				}
			}
		}
		if !endpoint {
			t.Fatal("accepted with no endpoint")
		}
	})
}
