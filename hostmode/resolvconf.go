//go:build linux

package hostmode

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
)

// resolvConf points a resolv.conf file at warren's own DNS server while
// the tunnel is wanted, and puts the original back when it is not. The
// original is kept in a backup file next to it, written before the file is
// changed and removed only once it is restored: a warren that dies leaves
// the backup, and the next warren, or warren down, restores from it.
//
// The file is rewritten in place, never replaced by a rename: it may be a
// bind mount (ip netns exec, containers), onto which nothing can be renamed.
type resolvConf struct {
	path   string
	server netip.Addr // warren's DNS server, on port 53
}

func (r *resolvConf) backupPath() string { return r.path + ".warren-backup" }

// ours is what the file says while warren manages it.
func (r *resolvConf) ours() []byte {
	return fmt.Appendf(nil, "# Written by warren, which answers DNS through its tunnel. The original is in\n# %s and comes back when warren disconnects or stops (or with warren down).\nnameserver %s\n", r.backupPath(), r.server)
}

// point makes the file name warren's server, backing up the original
// first unless a backup is there already (then the file is ours from
// before: a warren that died).
func (r *resolvConf) point() error {
	if _, err := os.Stat(r.backupPath()); errors.Is(err, fs.ErrNotExist) {
		orig, err := os.ReadFile(r.path)
		if err != nil {
			return fmt.Errorf("resolv.conf: %w", err)
		}
		if err := writeSynced(r.backupPath(), orig); err != nil {
			return fmt.Errorf("resolv.conf backup: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("resolv.conf backup: %w", err)
	}
	if cur, err := os.ReadFile(r.path); err == nil && bytes.Equal(cur, r.ours()) {
		return nil
	}
	if err := writeSynced(r.path, r.ours()); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}

// restore puts the original back from the backup, if there is one, and
// removes the backup. It reports whether there was one.
func (r *resolvConf) restore() (bool, error) {
	orig, err := os.ReadFile(r.backupPath())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("resolv.conf backup: %w", err)
	}
	if err := writeSynced(r.path, orig); err != nil {
		return true, fmt.Errorf("resolv.conf: restore: %w", err)
	}
	if err := os.Remove(r.backupPath()); err != nil {
		return true, fmt.Errorf("resolv.conf backup: %w", err)
	}
	return true, nil
}

// writeSynced writes data to path in place (keeping its mode and owner if
// it exists, 0644 if not) and syncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
