//go:build linux

package hostmode

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	orig := "search example.org\nnameserver 192.0.2.53\n"
	os.WriteFile(path, []byte(orig), 0o644)
	r := &resolvConf{path: path, server: netip.MustParseAddr("127.0.0.1")}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}

	if err := r.point(); err != nil {
		t.Fatal(err)
	}
	if got := read(path); !strings.Contains(got, "\nnameserver 127.0.0.1\n") || strings.Contains(got, "192.0.2.53") {
		t.Errorf("pointed: %q", got)
	}
	if got := read(r.backupPath()); got != orig {
		t.Errorf("backup: %q, want %q", got, orig)
	}
	// Again (another transition), and again after a crash (a new
	// resolvConf finds the backup): the backup stays the original.
	r.point()
	r2 := &resolvConf{path: path, server: r.server}
	if err := r2.point(); err != nil {
		t.Fatal(err)
	}
	if got := read(r.backupPath()); got != orig {
		t.Errorf("backup after a second point: %q, want the original", got)
	}
	if ok, err := r2.restore(); !ok || err != nil {
		t.Fatalf("restore: %v, %v", ok, err)
	}
	if got := read(path); got != orig {
		t.Errorf("restored: %q, want %q", got, orig)
	}
	if _, err := os.Stat(r.backupPath()); !os.IsNotExist(err) {
		t.Errorf("the backup is still there: %v", err)
	}
	if ok, err := r2.restore(); ok || err != nil {
		t.Errorf("restore with no backup: %v, %v; want nothing done", ok, err)
	}
	if got := read(path); got != orig {
		t.Errorf("after a second restore: %q", got)
	}
}
