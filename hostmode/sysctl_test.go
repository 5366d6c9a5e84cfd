//go:build linux

package hostmode

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysctls points sysctlRoot at a directory holding files (path under
// /proc/sys/net -> value) for the test's duration.
func fakeSysctls(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := sysctlRoot
	sysctlRoot = dir
	t.Cleanup(func() { sysctlRoot = old })
	return dir
}

func TestIPv6Off(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		link  string
		off   bool
		why   string
	}{
		{"on", map[string]string{"ipv6/conf/all/disable_ipv6": "0", "ipv6/conf/default/disable_ipv6": "0", "ipv6/conf/wt0/disable_ipv6": "0"}, "wt0", false, ""},
		{"on on the link", map[string]string{"ipv6/conf/all/disable_ipv6": "1", "ipv6/conf/default/disable_ipv6": "1", "ipv6/conf/wt0/disable_ipv6": "0"}, "wt0", false, ""},
		{"off on the link", map[string]string{"ipv6/conf/all/disable_ipv6": "0", "ipv6/conf/default/disable_ipv6": "0", "ipv6/conf/wt0/disable_ipv6": "1"}, "wt0", true, "net.ipv6.conf.wt0.disable_ipv6=1"},
		{"off everywhere", map[string]string{"ipv6/conf/all/disable_ipv6": "1", "ipv6/conf/default/disable_ipv6": "1", "ipv6/conf/wt0/disable_ipv6": "1"}, "wt0", true, "net.ipv6.conf.all.disable_ipv6=1"},
		{"off for new links", map[string]string{"ipv6/conf/all/disable_ipv6": "0", "ipv6/conf/default/disable_ipv6": "1"}, "", true, "net.ipv6.conf.default.disable_ipv6=1"},
		{"on for new links", map[string]string{"ipv6/conf/all/disable_ipv6": "1", "ipv6/conf/default/disable_ipv6": "0"}, "", false, ""},
		{"no IPv6 in the kernel", map[string]string{"ipv4/conf/all/rp_filter": "0"}, "wt0", true, "the kernel has no IPv6"},
		{"link without IPv6 settings", map[string]string{"ipv6/conf/default/disable_ipv6": "0"}, "wt0", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeSysctls(t, tc.files)
			off, why := ipv6Off(tc.link)
			if off != tc.off || why != tc.why {
				t.Errorf("ipv6Off(%q) = %v, %q; want %v, %q", tc.link, off, why, tc.off, tc.why)
			}
		})
	}
}

func TestSrcValidMark(t *testing.T) {
	dir := fakeSysctls(t, map[string]string{sysctlSrcValidMark: "0"})
	read := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, sysctlSrcValidMark))
		return strings.TrimSpace(string(b))
	}
	if changed, err := setSrcValidMark(); !changed || err != nil || read() != "1" {
		t.Errorf("from 0: changed %v, err %v, now %q; want true, nil, 1", changed, err, read())
	}
	if changed, err := setSrcValidMark(); changed || err != nil || read() != "1" {
		t.Errorf("from 1: changed %v, err %v, now %q; want false, nil, 1", changed, err, read())
	}

	// Missing: an error that names it.
	fakeSysctls(t, map[string]string{})
	if _, err := setSrcValidMark(); err == nil || !strings.Contains(err.Error(), "net.ipv4.conf.all.src_valid_mark") {
		t.Errorf("missing: err %v, want one naming the sysctl", err)
	}
}

func TestStrictRPFilter(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  bool
	}{
		{"off", map[string]string{"ipv4/conf/all/rp_filter": "0", "ipv4/conf/eth0/rp_filter": "0"}, false},
		{"loose", map[string]string{"ipv4/conf/all/rp_filter": "2", "ipv4/conf/eth0/rp_filter": "0"}, false},
		{"all strict", map[string]string{"ipv4/conf/all/rp_filter": "1", "ipv4/conf/eth0/rp_filter": "0"}, true},
		{"one link strict", map[string]string{"ipv4/conf/all/rp_filter": "0", "ipv4/conf/eth0/rp_filter": "1"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeSysctls(t, tc.files)
			if got := strictRPFilter(); got != tc.want {
				t.Errorf("strictRPFilter() = %v, want %v", got, tc.want)
			}
		})
	}
}
