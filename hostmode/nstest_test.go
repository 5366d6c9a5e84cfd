//go:build linux

package hostmode

// Helpers for tests that build network namespaces. Every identifier here
// starts with "fw" so that other tests in the package can have their own.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// fwNeedRoot skips the test unless it runs as root.
func fwNeedRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and programs nftables in them")
	}
}

// fwRandomName returns prefix followed by 6 random hex digits, for names
// that must not collide with another test run's.
func fwRandomName(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// fwNS is a named network namespace that a test created and deletes.
type fwNS struct {
	name string
	h    netns.NsHandle
}

// fwNewNS creates the namespace name with its loopback up, and deletes it when
// the test ends, whether it passed or not. It skips the test if namespaces
// cannot be created here.
func fwNewNS(t *testing.T, name string) *fwNS {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: ip netns add %s: %v: %s", name, err, fwTrim(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, fwTrim(out))
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open network namespace %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	ns := &fwNS{name: name, h: h}
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

// ip runs "ip -n NS args..." and fails the test if it fails.
func (ns *fwNS) ip(t *testing.T, args ...string) {
	t.Helper()
	args = append([]string{"-n", ns.name}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, fwTrim(out))
	}
}

// nft runs nft in the namespace and returns its output. Tests use it only to
// look at the state, or to change it behind the Firewall's back.
func (ns *fwNS) nft(t *testing.T, args ...string) string {
	t.Helper()
	args = append([]string{"netns", "exec", ns.name, "nft"}, args...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, fwTrim(out))
	}
	return string(out)
}

// do runs fn on an OS thread switched into the namespace, and waits for it.
// Sockets fn creates belong to the namespace for their whole life, so they
// can be used from any goroutine afterwards.
func (ns *fwNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// If switching back fails, the thread stays locked and the runtime
		// discards it when this goroutine returns.
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns.h); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", ns.name, err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func fwTrim(b []byte) string { return strings.TrimSpace(string(b)) }
