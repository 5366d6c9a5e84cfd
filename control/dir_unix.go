//go:build unix

package control

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// checkPrivateDir refuses a directory in which another user could remove or
// replace the API socket: one owned by someone other than us or root, or one
// writable by group or others without the sticky bit (which /tmp has).
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("control: %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid && st.Uid != 0 {
		return fmt.Errorf("control: %s belongs to another user (uid %d): choose another API address", dir, st.Uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("control: %s is writable by other users (mode %v): choose another API address", dir, fi.Mode().Perm())
	}
	return nil
}
