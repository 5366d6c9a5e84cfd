//go:build !unix

package control

import (
	"fmt"
	"os"
)

// checkPrivateDir checks only that dir is a directory: ownership is a unix
// notion.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("control: %s is not a directory", dir)
	}
	return nil
}
