package control

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The socket is 0600 in a directory ListenUnix made 0700, answers, and is
// removed on Close.
func TestListenUnix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "warren")
	path := filepath.Join(dir, "warren.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v, %v; want mode 0700", di.Mode(), err)
	}
	if got := l.Addr().String(); got != path {
		t.Errorf("Addr %q, want %q", got, path)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the directory holds %d entries, want the socket alone", len(entries))
	}

	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close: %v, want the socket gone", err)
	}
	l.Close() // twice is fine
}

// A socket nobody answers on is replaced; a live one, or a file that is not
// a socket, is left alone with an error.
func TestListenUnixInTheWay(t *testing.T) {
	t.Run("stale", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "warren.sock")
		old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		old.SetUnlinkOnClose(false)
		old.Close() // as if its warren died: the file stays
		if _, err := os.Lstat(path); err != nil {
			t.Fatal(err)
		}
		l, err := ListenUnix(path)
		if err != nil {
			t.Fatalf("over a stale socket: %v", err)
		}
		l.Close()
	})
	t.Run("live", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "warren.sock")
		first, err := ListenUnix(path)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		_, err = ListenUnix(path)
		if err == nil || !strings.Contains(err.Error(), "another warren is already running at "+path) {
			t.Fatalf("over a live socket: %v", err)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
			t.Errorf("the live socket was touched: %v", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "warren.sock")
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ListenUnix(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("over a file: %v", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "keep me" {
			t.Error("the file was touched")
		}
	})
	t.Run("directory others can write", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "open")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if _, err := ListenUnix(filepath.Join(dir, "warren.sock")); err == nil || !strings.Contains(err.Error(), "writable by other users") {
			t.Fatalf("in a 0777 directory: %v", err)
		}
		if err := os.Chmod(dir, 0o777|fs.ModeSticky); err != nil {
			t.Fatal(err)
		}
		l, err := ListenUnix(filepath.Join(dir, "warren.sock"))
		if err != nil {
			t.Fatalf("in a sticky directory, like /tmp: %v", err)
		}
		l.Close()
	})
	t.Run("directory of another user", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root, to give a directory to another user")
		}
		dir := filepath.Join(t.TempDir(), "theirs")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		if _, err := ListenUnix(filepath.Join(dir, "warren.sock")); err == nil || !strings.Contains(err.Error(), "belongs to another user (uid 12345)") {
			t.Fatalf("in another user's directory: %v", err)
		}
	})
}

// Close leaves alone a socket that has replaced the listener's.
func TestListenUnixCloseKeepsNewerSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warren.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	newer, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the newer socket is gone: %v", err)
	}
}

func TestParseAPIAddr(t *testing.T) {
	tests := []struct {
		name, in      string
		network, addr string
		err           string // in the error; "" for none
	}{
		{"unix", "unix:/run/warren/warren.sock", "unix", "/run/warren/warren.sock", ""},
		{"unix relative", "unix:warren.sock", "unix", "warren.sock", ""},
		{"tcp", "tcp:127.0.0.1:9090", "tcp", "127.0.0.1:9090", ""},
		{"tcp ipv6", "tcp:[::1]:9090", "tcp", "[::1]:9090", ""},
		{"tcp name", "tcp:localhost:9090", "tcp", "localhost:9090", ""},
		{"tcp any host", "tcp::9090", "tcp", ":9090", ""},
		{"unix no path", "unix:", "", "", `"unix:" has no path`},
		{"tcp no port", "tcp:127.0.0.1", "", "", `"tcp:127.0.0.1": "127.0.0.1" is not HOST:PORT`},
		{"tcp bad port", "tcp:127.0.0.1:http", "", "", `"http" is not a port number`},
		{"tcp port too big", "tcp:127.0.0.1:70000", "", "", `"70000" is not a port number`},
		{"no scheme", "/run/warren/warren.sock", "", "", `API address "/run/warren/warren.sock": want unix:PATH or tcp:HOST:PORT`},
		{"other scheme", "http://127.0.0.1:9090", "", "", `API address "http://127.0.0.1:9090": want unix:PATH or tcp:HOST:PORT`},
		{"empty", "", "", "", `API address "": want`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			network, addr, err := ParseAPIAddr(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("error %v, want one with %q", err, tt.err)
				}
				return
			}
			if err != nil || network != tt.network || addr != tt.addr {
				t.Errorf("= %q, %q, %v; want %q, %q", network, addr, err, tt.network, tt.addr)
			}
		})
	}
}

func TestDefaultSocketPath(t *testing.T) {
	tests := []struct {
		name string
		xdg  string
		uid  int
		want string
	}{
		{"root", "", 0, "/run/warren/warren.sock"},
		{"root with XDG_RUNTIME_DIR", "/run/user/0", 0, "/run/warren/warren.sock"},
		{"user", "/run/user/1000", 1000, "/run/user/1000/warren.sock"},
		{"user without XDG_RUNTIME_DIR", "", 1000, filepath.Join(os.TempDir(), "warren-1000", "warren.sock")},
		{"user with a relative XDG_RUNTIME_DIR", "run", 1000, filepath.Join(os.TempDir(), "warren-1000", "warren.sock")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "XDG_RUNTIME_DIR" {
					return tt.xdg
				}
				return ""
			}
			if got := DefaultSocketPath(getenv, tt.uid); got != tt.want {
				t.Errorf("= %q, want %q", got, tt.want)
			}
		})
	}
}
