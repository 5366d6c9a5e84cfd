package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultSocketPath is where the API's unix socket is unless told otherwise:
// /run/warren/warren.sock for root (uid 0); else $XDG_RUNTIME_DIR/warren.sock
// if XDG_RUNTIME_DIR is set (to an absolute path); else
// warren-<uid>/warren.sock in os.TempDir(). Server and client call it alike,
// so that they meet without configuration.
func DefaultSocketPath(getenv func(string) string, uid int) string {
	if uid == 0 {
		return "/run/warren/warren.sock"
	}
	if dir := getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "warren.sock")
	}
	return filepath.Join(os.TempDir(), "warren-"+strconv.Itoa(uid), "warren.sock")
}

// ParseAPIAddr parses an API address: "unix:PATH" or "tcp:HOST:PORT". It
// returns the network ("unix" or "tcp") and the address for net.Listen or
// net.Dial.
func ParseAPIAddr(s string) (network, addr string, err error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return "", "", fmt.Errorf("API address %q has no path: want unix:PATH", s)
		}
		return "unix", path, nil
	}
	if hostPort, ok := strings.CutPrefix(s, "tcp:"); ok {
		_, port, err := net.SplitHostPort(hostPort)
		if err != nil {
			return "", "", fmt.Errorf("API address %q: %q is not HOST:PORT", s, hostPort)
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", "", fmt.Errorf("API address %q: %q is not a port number", s, port)
		}
		return "tcp", hostPort, nil
	}
	return "", "", fmt.Errorf("API address %q: want unix:PATH or tcp:HOST:PORT", s)
}

// ListenUnix listens on the unix socket path, with mode 0600 so that only
// its owner (and root) can connect.
//
// It creates path's directory (mode 0700) if it is missing, and refuses a
// directory that other users could replace the socket in: one owned by
// another user, or writable by others without the sticky bit. A socket left
// at path by a warren that died is removed; if something answers on it, or
// path is not a socket, ListenUnix fails instead.
//
// The socket is bound inside a private temporary directory, made 0600 there
// and only then renamed to path, so it is never reachable with a looser mode,
// whatever the umask. Closing the listener removes path, unless another
// socket has replaced it since.
func ListenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := checkPrivateDir(dir); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}

	tmpDir, err := os.MkdirTemp(dir, ".warren-")
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control: listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // it would remove tmp; unixListener removes path
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("control: %w", err)
	}
	return &unixListener{UnixListener: l, path: path, file: fi}, nil
}

// removeStale removes a socket at path that nothing answers on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control: %s exists and is not a socket: remove it, or choose another API address", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control: another warren is already running at %s (stop it, or choose another API address)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control: %s is in the way: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("control: remove a stale socket: %w", err)
	}
	return nil
}

// unixListener is the listener ListenUnix returns.
type unixListener struct {
	*net.UnixListener
	path  string
	file  fs.FileInfo // the socket file, to tell it from a newer one
	close sync.Once
	err   error
}

// Addr returns the socket's path (the listener was bound under another).
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close closes the listener and removes its socket file. It is safe to call
// more than once.
func (l *unixListener) Close() error {
	l.close.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.file) {
			os.Remove(l.path)
		}
		l.err = l.UnixListener.Close()
	})
	return l.err
}
