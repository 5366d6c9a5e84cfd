//go:build linux

package hostmode

// The two sysctls host mode looks at, read and written through /proc/sys/net,
// which shows the network namespace of the process (warren runs in the one it
// protects):
//
//   - net.ipv4.conf.all.src_valid_mark: Host sets it to 1 when the routing
//     rules first go in, as wg-quick does, so that the reverse-path check of
//     the endpoint's replies uses their mark (firewall.go restores it), and
//     leaves it set. It only lets the check see marks; in a namespace where
//     no packet is marked it changes nothing.
//   - net.ipv6.conf.LINK.disable_ipv6, for the TUN: when IPv6 is off there
//     (Docker turns it off in containers on networks without IPv6), the TUN
//     gets only the config's IPv4 addresses and routes.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// sysctlRoot is where the namespace's network sysctls are; tests point it
// elsewhere.
var sysctlRoot = "/proc/sys/net"

const (
	sysctlSrcValidMark = "ipv4/conf/all/src_valid_mark"
	sysctlRPFilterGlob = "ipv4/conf/*/rp_filter"
)

// sysctlGet returns the value of name, a path under sysctlRoot.
func sysctlGet(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(sysctlRoot, name))
	if err != nil {
		return "", fmt.Errorf("hostmode: read %s: %w", sysctlName(name), err)
	}
	return strings.TrimSpace(string(b)), nil
}

// sysctlSet sets name, a path under sysctlRoot, to value.
func sysctlSet(name, value string) error {
	// O_WRONLY without O_CREATE or O_TRUNC: a sysctl exists or does not.
	f, err := os.OpenFile(filepath.Join(sysctlRoot, name), os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("hostmode: set %s=%s: %w", sysctlName(name), value, err)
	}
	return nil
}

// sysctlName is name as sysctl(8) shows it: net.ipv4.conf.all.rp_filter.
func sysctlName(name string) string {
	return "net." + strings.ReplaceAll(name, "/", ".")
}

// setSrcValidMark makes net.ipv4.conf.all.src_valid_mark 1, and reports
// whether it was not already.
func setSrcValidMark() (changed bool, err error) {
	v, err := sysctlGet(sysctlSrcValidMark)
	if err != nil {
		return false, err
	}
	if v == "1" {
		return false, nil
	}
	return true, sysctlSet(sysctlSrcValidMark, "1")
}

// strictRPFilter reports whether strict reverse-path filtering
// (rp_filter=1) is on for all interfaces or for one of them: the kernel
// applies the larger of "all" and the interface's own value.
func strictRPFilter() bool {
	paths, _ := filepath.Glob(filepath.Join(sysctlRoot, sysctlRPFilterGlob))
	for _, p := range paths {
		name, _ := filepath.Rel(sysctlRoot, p)
		if v, err := sysctlGet(name); err == nil && v == "1" {
			return true
		}
	}
	return false
}

// ipv6Off reports whether IPv6 is disabled on link (or, with link "", for
// links created from now on: they take the "default" setting), and why, in
// words for a log line. A kernel without IPv6 has it off everywhere.
func ipv6Off(link string) (bool, string) {
	if _, err := os.Stat(filepath.Join(sysctlRoot, "ipv6")); errors.Is(err, fs.ErrNotExist) {
		return true, "the kernel has no IPv6"
	}
	own := "default"
	if link != "" {
		own = link
	}
	if v, err := sysctlGet("ipv6/conf/" + own + "/disable_ipv6"); err != nil || v != "1" {
		return false, ""
	}
	// Name the setting that was most likely changed: "all" sets "default"
	// and every link, and a new link takes "default".
	for _, name := range []string{"all", "default", own} {
		if v, err := sysctlGet("ipv6/conf/" + name + "/disable_ipv6"); err == nil && v == "1" {
			return true, "net.ipv6.conf." + name + ".disable_ipv6=1"
		}
	}
	return true, "net.ipv6.conf." + own + ".disable_ipv6=1"
}
