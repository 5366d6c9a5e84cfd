//go:build linux

package hostmode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
)

// The tests below that need root build this topology with ip(8):
//
//	namespace p (warren's)                  namespace o (the world)
//	  wrtv 10.99.0.2/24 fd99::2/64  <--veth-->  wrto 10.99.0.1/24 fd99::1/64
//	  default via 10.99.0.1, fd99::1
//	  wrt0 (stand-in TUN)           <--veth-->  wrt0p in namespace far
//
// wrt0 is a veth rather than a TUN so that it has carrier without a
// process behind it. wrtv has no IPv6 link-local address, whose
// duplicate address detection would change p's routes a second later.
const (
	rtLink   = "wrt0" // the stand-in for warren's TUN, in p
	rtUplink = "wrtv" // p's side of the veth to o
)

var (
	rtDefaults  = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	rtLinkAddrs = []netip.Prefix{netip.MustParsePrefix("10.64.0.2/32"), netip.MustParsePrefix("fd00:64::2/128")}
	rtSeq       atomic.Int32
)

// rtTopo is one test's namespaces, named after the topology above.
type rtTopo struct {
	p, o, far string
}

// rtNewTopo builds the topology without wrt0, or skips the test when it
// cannot. The namespaces are deleted when the test ends, however it ends.
func rtNewTopo(t *testing.T) *rtTopo {
	t.Helper()
	rtSkipUnlessRoot(t)
	tp := &rtTopo{p: rtNewNS(t, "p"), o: rtNewNS(t, "o"), far: rtNewNS(t, "t")}
	for _, args := range [][]string{
		{"-n", tp.p, "link", "add", rtUplink, "type", "veth", "peer", "name", "wrto", "netns", tp.o},
		{"-n", tp.p, "addr", "add", "10.99.0.2/24", "dev", rtUplink},
		{"-n", tp.p, "addr", "add", "fd99::2/64", "dev", rtUplink, "nodad"},
		{"-n", tp.o, "addr", "add", "10.99.0.1/24", "dev", "wrto"},
		{"-n", tp.o, "addr", "add", "fd99::1/64", "dev", "wrto", "nodad"},
		{"-n", tp.p, "link", "set", rtUplink, "addrgenmode", "none"},
		{"-n", tp.o, "link", "set", "wrto", "up"},
		{"-n", tp.p, "link", "set", rtUplink, "up"},
		{"-n", tp.p, "link", "set", "lo", "up"},
		{"-n", tp.p, "route", "add", "default", "via", "10.99.0.1"},
		{"-n", tp.p, "-6", "route", "add", "default", "via", "fd99::1"},
	} {
		rtIP(t, args...)
	}
	// The kernel sets up IPv6 on wrtv only once it has seen the carrier,
	// asynchronously; the multicast route is the last of it.
	rtWaitFor(t, "IPv6 on "+rtUplink, func() bool {
		return slices.Contains(tp.lines(t, "-6", "route", "show", "table", "local", "dev", rtUplink),
			"multicast ff00::/8 proto kernel metric 256 pref medium")
	})
	return tp
}

// rtWaitFor polls cond for up to five seconds, and fails the test if it
// never holds.
func rtWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func rtSkipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: routing tests need root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: routing tests need ip(8) from iproute2")
	}
}

// rtNewNS adds a uniquely named namespace and deletes it when t ends.
func rtNewNS(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("wrt%d-%d%s", os.Getpid(), rtSeq.Add(1), role)
	if _, err := rtIPErr("netns", "add", name); err != nil {
		t.Skipf("skipping: routing tests need network namespaces: ip netns add: %v", err)
	}
	t.Cleanup(func() {
		if _, err := rtIPErr("netns", "del", name); err != nil {
			t.Errorf("ip netns del %s: %v", name, err)
		}
	})
	return name
}

// rtIP runs ip(8) and returns its output; an error fails the test.
func rtIP(t *testing.T, args ...string) string {
	t.Helper()
	out, err := rtIPErr(args...)
	if err != nil {
		t.Fatalf("ip %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func rtIPErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// addLink creates wrt0 in p as a new TUN would be: down, no addresses.
func (tp *rtTopo) addLink(t *testing.T) {
	t.Helper()
	rtIP(t, "-n", tp.p, "link", "add", rtLink, "type", "veth", "peer", "name", "wrt0p", "netns", tp.far)
	rtIP(t, "-n", tp.far, "link", "set", "wrt0p", "up")
}

// routing returns a Routing for p, closed when t ends.
func (tp *rtTopo) routing(t *testing.T, o RoutingOptions) *Routing {
	t.Helper()
	ns, err := netns.GetFromName(tp.p)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	o.NetNS = ns
	r, err := NewRouting(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// state is everything of p's that Cleanup must restore.
func (tp *rtTopo) state(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"rule", "show"},
		{"-6", "rule", "show"},
		{"route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
		{"link"},
	} {
		fmt.Fprintf(&b, "$ ip %s\n%s", strings.Join(args, " "), rtIP(t, append([]string{"-n", tp.p}, args...)...))
	}
	return b.String()
}

// lines runs ip in p and returns its output's lines, blanks squeezed.
func (tp *rtTopo) lines(t *testing.T, args ...string) []string {
	t.Helper()
	var lines []string
	for l := range strings.Lines(rtIP(t, append([]string{"-n", tp.p}, args...)...)) {
		if f := strings.Fields(l); len(f) > 0 {
			lines = append(lines, strings.Join(f, " "))
		}
	}
	return lines
}

// rules returns p's rules in family ("-4" or "-6") at prio and prio+1.
func (tp *rtTopo) rules(t *testing.T, family string, prio int) []string {
	t.Helper()
	var rules []string
	for _, l := range tp.lines(t, family, "rule", "show") {
		if strings.HasPrefix(l, fmt.Sprintf("%d:", prio)) || strings.HasPrefix(l, fmt.Sprintf("%d:", prio+1)) {
			rules = append(rules, l)
		}
	}
	return rules
}

// routeDev returns the device "ip route get ARGS" picks in p.
func (tp *rtTopo) routeDev(t *testing.T, args ...string) string {
	t.Helper()
	out := rtIP(t, append([]string{"-n", tp.p, "-j", "route", "get"}, args...)...)
	var routes []struct {
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil || len(routes) != 1 {
		t.Fatalf("ip route get %s: cannot read %q: %v", strings.Join(args, " "), out, err)
	}
	return routes[0].Dev
}

// link returns wrt0's addresses ("ADDR/LEN", then " nodad" or
// " tentative" when so), its MTU, and whether it is up.
func (tp *rtTopo) link(t *testing.T) (addrs []string, mtu int, up bool) {
	t.Helper()
	out := rtIP(t, "-n", tp.p, "-j", "addr", "show", "dev", rtLink)
	var links []struct {
		MTU      int      `json:"mtu"`
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
			Nodad     bool   `json:"nodad"`
			Tentative bool   `json:"tentative"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip addr show dev %s: cannot read %q: %v", rtLink, out, err)
	}
	for _, a := range links[0].AddrInfo {
		s := fmt.Sprintf("%s/%d", a.Local, a.Prefixlen)
		if a.Nodad {
			s += " nodad"
		}
		if a.Tentative {
			s += " tentative"
		}
		addrs = append(addrs, s)
	}
	slices.Sort(addrs)
	return addrs, links[0].MTU, slices.Contains(links[0].Flags, "UP")
}

func TestRoutingOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    RoutingOptions
		table   int
		mark    uint32
		prio    int
		wantErr bool
	}{
		{name: "defaults", table: DefaultTable, mark: DefaultMark, prio: DefaultPriority},
		{name: "custom", opts: RoutingOptions{Table: 100, Mark: 1, Priority: 32764}, table: 100, mark: 1, prio: 32764},
		{name: "none is own namespace", opts: RoutingOptions{NetNS: netns.None()}, table: DefaultTable, mark: DefaultMark, prio: DefaultPriority},
		{name: "main table", opts: RoutingOptions{Table: 254}, wantErr: true},
		{name: "local table", opts: RoutingOptions{Table: 255}, wantErr: true},
		{name: "default table", opts: RoutingOptions{Table: 253}, wantErr: true},
		{name: "negative table", opts: RoutingOptions{Table: -1}, wantErr: true},
		{name: "priority at main's", opts: RoutingOptions{Priority: 32765}, wantErr: true},
		{name: "negative priority", opts: RoutingOptions{Priority: -1}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRouting(tt.opts)
			if tt.wantErr {
				if err == nil {
					r.Close()
					t.Fatal("NewRouting succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if r.table != tt.table || r.mark != tt.mark || r.prio != tt.prio {
				t.Errorf("table, mark, priority = %d, %#x, %d; want %d, %#x, %d",
					r.table, r.mark, r.prio, tt.table, tt.mark, tt.prio)
			}
		})
	}
}

func TestRoutingClosed(t *testing.T) {
	r, err := NewRouting(RoutingOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// None of these may reach the kernel: this is the test's own namespace.
	_, lerr := r.Leftovers(rtLink)
	for name, err := range map[string]error{
		"SetupLink": r.SetupLink(rtLink, rtLinkAddrs, 1420),
		"SetRules":  r.SetRules(true, true),
		"SetRoutes": r.SetRoutes(rtLink, rtDefaults),
		"Cleanup":   r.Cleanup(rtLink),
		"Leftovers": lerr,
	} {
		if !errors.Is(err, errRoutingClosed) {
			t.Errorf("%s after Close: %v, want %v", name, err, errRoutingClosed)
		}
	}
}

func TestRoutingSetupLink(t *testing.T) {
	tp := rtNewTopo(t)
	tp.addLink(t)
	// Stale addresses, and, once up, the kernel's own link-local one.
	rtIP(t, "-n", tp.p, "addr", "add", "192.0.2.77/24", "dev", rtLink)
	rtIP(t, "-n", tp.p, "addr", "add", "2001:db8:dead::1/64", "dev", rtLink, "nodad")
	rtIP(t, "-n", tp.p, "link", "set", rtLink, "up")
	rtWaitFor(t, "a link-local address to remove", func() bool {
		addrs, _, _ := tp.link(t)
		return slices.ContainsFunc(addrs, func(a string) bool { return strings.HasPrefix(a, "fe80:") })
	})
	r := tp.routing(t, RoutingOptions{})

	steps := []struct {
		name  string
		addrs []netip.Prefix
		mtu   int
		want  []string
	}{
		{"first", rtLinkAddrs, 1380, []string{"10.64.0.2/32", "fd00:64::2/128 nodad"}},
		{"again", rtLinkAddrs, 1380, []string{"10.64.0.2/32", "fd00:64::2/128 nodad"}},
		{"changed", []netip.Prefix{netip.MustParsePrefix("10.64.0.3/24")}, 1420, []string{"10.64.0.3/24"}},
	}
	for _, st := range steps {
		if err := r.SetupLink(rtLink, st.addrs, st.mtu); err != nil {
			t.Fatalf("%s: SetupLink: %v", st.name, err)
		}
		addrs, mtu, up := tp.link(t)
		if !slices.Equal(addrs, st.want) || mtu != st.mtu || !up {
			t.Errorf("%s: addresses %q, MTU %d, up %v; want %q, %d, true", st.name, addrs, mtu, up, st.want, st.mtu)
		}
	}
	// Nor may the kernel add a link-local address back at the next up.
	out := rtIP(t, "-n", tp.p, "-j", "-d", "link", "show", "dev", rtLink)
	var links []struct {
		GenMode string `json:"inet6_addr_gen_mode"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 || links[0].GenMode != "none" {
		t.Errorf("ip -d link show dev %s: IPv6 address generation mode not none: %s", rtLink, out)
	}

	bad := []struct {
		name  string
		link  string
		addrs []netip.Prefix
		mtu   int
	}{
		{"missing link", "wrt9", rtLinkAddrs, 1420},
		{"MTU too small for IPv6", rtLink, rtLinkAddrs, 1279},
		{"no MTU", rtLink, nil, 0},
		{"invalid prefix", rtLink, []netip.Prefix{{}}, 1420},
		{"mapped address", rtLink, []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.1/128")}, 1420},
	}
	for _, b := range bad {
		if err := r.SetupLink(b.link, b.addrs, b.mtu); err == nil {
			t.Errorf("%s: SetupLink succeeded, want an error", b.name)
		}
	}
	if addrs, mtu, up := tp.link(t); !slices.Equal(addrs, []string{"10.64.0.3/24"}) || mtu != 1420 || !up {
		t.Errorf("failed SetupLink calls changed the link: addresses %q, MTU %d, up %v", addrs, mtu, up)
	}
}

func TestRoutingRulesAndRoutes(t *testing.T) {
	tests := []struct {
		name  string
		opts  RoutingOptions
		prio  int
		mark  string
		table string
	}{
		{"defaults", RoutingOptions{}, 5200, "0x5752", "51820"},
		{"custom", RoutingOptions{Table: 1234, Mark: 0xca6c, Priority: 100}, 100, "0xca6c", "1234"},
	}
	rtSkipUnlessRoot(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp := rtNewTopo(t)
			tp.addLink(t)
			r := tp.routing(t, tt.opts)
			if err := r.SetupLink(rtLink, rtLinkAddrs, 1420); err != nil {
				t.Fatal(err)
			}

			wantRules := []string{
				fmt.Sprintf("%d: from all lookup main suppress_prefixlength 0 proto 87", tt.prio),
				fmt.Sprintf("%d: not from all fwmark %s lookup %s proto 87", tt.prio+1, tt.mark, tt.table),
			}
			checkRules := func(step string, v4, v6 bool) {
				t.Helper()
				for _, f := range []struct {
					flag string
					want bool
				}{{"-4", v4}, {"-6", v6}} {
					var want []string
					if f.want {
						want = wantRules
					}
					if got := tp.rules(t, f.flag, tt.prio); !slices.Equal(got, want) {
						t.Errorf("%s: ip %s rule: %q, want %q", step, f.flag, got, want)
					}
				}
			}
			checkTable := func(step string, v4, v6 []string) {
				t.Helper()
				if got := tp.lines(t, "-4", "route", "show", "table", tt.table); !slices.Equal(got, v4) {
					t.Errorf("%s: ip -4 route show table %s: %q, want %q", step, tt.table, got, v4)
				}
				if got := tp.lines(t, "-6", "route", "show", "table", tt.table); !slices.Equal(got, v6) {
					t.Errorf("%s: ip -6 route show table %s: %q, want %q", step, tt.table, got, v6)
				}
			}
			checkDevs := func(step string, tunnel string) {
				t.Helper()
				for _, c := range []struct {
					args []string
					dev  string
				}{
					{[]string{"203.0.113.9"}, tunnel},
					{[]string{"2001:db8:1::9"}, tunnel},
					// warren's own packets take the main table, ...
					{[]string{"203.0.113.9", "mark", tt.mark}, rtUplink},
					{[]string{"2001:db8:1::9", "mark", tt.mark}, rtUplink},
					// ... and so does a route in main more specific than a default.
					{[]string{"10.99.0.55"}, rtUplink},
					{[]string{"fd99::55"}, rtUplink},
				} {
					if dev := tp.routeDev(t, c.args...); dev != c.dev {
						t.Errorf("%s: ip route get %s: dev %s, want %s", step, strings.Join(c.args, " "), dev, c.dev)
					}
				}
			}

			for i := range 2 {
				if err := r.SetRules(true, true); err != nil {
					t.Fatal(err)
				}
				checkRules(fmt.Sprintf("SetRules #%d", i+1), true, true)
			}
			checkDevs("rules, no routes", rtUplink)

			for i := range 2 {
				if err := r.SetRoutes(rtLink, rtDefaults); err != nil {
					t.Fatal(err)
				}
				step := fmt.Sprintf("SetRoutes(defaults) #%d", i+1)
				checkTable(step, []string{"default dev wrt0 scope link"}, []string{"default dev wrt0 metric 1024 pref medium"})
				checkDevs(step, rtLink)
			}

			if err := r.SetRoutes(rtLink, []netip.Prefix{netip.MustParsePrefix("198.51.100.7/24")}); err != nil {
				t.Fatal(err)
			}
			checkTable("SetRoutes(one)", []string{"198.51.100.0/24 dev wrt0 scope link"}, nil)
			checkDevs("SetRoutes(one)", rtUplink)
			if dev := tp.routeDev(t, "198.51.100.9"); dev != rtLink {
				t.Errorf("SetRoutes(one): ip route get 198.51.100.9: dev %s, want %s", dev, rtLink)
			}

			if err := r.SetRoutes("", nil); err != nil {
				t.Fatal(err)
			}
			checkTable("SetRoutes(none)", nil, nil)
			checkDevs("SetRoutes(none)", rtUplink)

			if err := r.SetRules(true, false); err != nil {
				t.Fatal(err)
			}
			checkRules("SetRules(v4 only)", true, false)
			if err := r.SetRules(false, false); err != nil {
				t.Fatal(err)
			}
			checkRules("SetRules(none)", false, false)

			if err := r.SetRoutes(rtLink, []netip.Prefix{{}}); err == nil {
				t.Error("SetRoutes with an invalid prefix succeeded")
			}
			if err := r.SetRoutes("wrt9", rtDefaults); err == nil {
				t.Error("SetRoutes via a missing link succeeded")
			}
		})
	}
}

func TestRoutingCleanupRestores(t *testing.T) {
	tp := rtNewTopo(t)
	// Someone else's policy routing, some of it at warren's priorities or
	// in a table next to warren's; none of it is warren's.
	for _, args := range [][]string{
		{"rule", "add", "priority", "1000", "from", "198.51.100.0/24", "lookup", "100"},
		{"-6", "rule", "add", "priority", "1000", "from", "2001:db8:100::/48", "lookup", "100"},
		// The kernel would take this one for warren's "from all" rule, to
		// add or to delete, were it not for warren's protocol.
		{"rule", "add", "priority", "5200", "from", "192.0.2.0/24", "lookup", "main", "suppress_prefixlength", "0"},
		{"rule", "add", "priority", "5201", "not", "fwmark", "0x1", "lookup", "51820"},
		{"-6", "rule", "add", "priority", "5201", "fwmark", "0x5752", "lookup", "51820"},
		{"-6", "rule", "add", "priority", "5201", "not", "from", "2001:db8:200::/48", "fwmark", "0x5752", "lookup", "51820"},
		{"route", "add", "198.51.100.0/24", "via", "10.99.0.1", "table", "100"},
		{"-6", "route", "add", "2001:db8:100::/48", "via", "fd99::1", "table", "100"},
		{"route", "add", "203.0.113.0/24", "via", "10.99.0.1", "table", "51821"},
	} {
		rtIP(t, append([]string{"-n", tp.p}, args...)...)
	}
	before := tp.state(t)

	tp.addLink(t)
	r := tp.routing(t, RoutingOptions{})
	if err := r.SetupLink(rtLink, rtLinkAddrs, 1420); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRules(true, true); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRoutes(rtLink, rtDefaults); err != nil {
		t.Fatal(err)
	}
	if tp.state(t) == before {
		t.Fatal("setting up changed nothing: the comparison below would prove nothing")
	}

	if err := r.Cleanup(rtLink); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if after := tp.state(t); after != before {
		t.Errorf("Cleanup did not restore the namespace\n--- before:\n%s\n--- after:\n%s", before, after)
	}
}

func TestRoutingCleanupClean(t *testing.T) {
	tp := rtNewTopo(t)
	r := tp.routing(t, RoutingOptions{})
	before := tp.state(t)

	if got, err := r.Leftovers(rtLink); err != nil || len(got) != 0 {
		t.Errorf("Leftovers on a clean namespace: %q, %v; want none", got, err)
	}
	if err := r.Cleanup(rtLink); err != nil {
		t.Errorf("Cleanup on a clean namespace: %v", err)
	}
	if after := tp.state(t); after != before {
		t.Errorf("Cleanup changed a clean namespace\n--- before:\n%s\n--- after:\n%s", before, after)
	}

	tp.addLink(t)
	if err := r.SetupLink(rtLink, rtLinkAddrs, 1420); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRules(true, true); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRoutes(rtLink, rtDefaults); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ipv4 rule 5200: from all lookup main suppress_prefixlength 0 proto 87",
		"ipv4 rule 5201: not from all fwmark 0x5752 lookup 51820 proto 87",
		"ipv4 route 0.0.0.0/0 dev wrt0 table 51820",
		"ipv6 rule 5200: from all lookup main suppress_prefixlength 0 proto 87",
		"ipv6 rule 5201: not from all fwmark 0x5752 lookup 51820 proto 87",
		"ipv6 route ::/0 dev wrt0 table 51820",
		"link wrt0",
	}
	if got, err := r.Leftovers(rtLink); err != nil || !slices.Equal(got, want) {
		t.Errorf("Leftovers when set up: %q, %v; want %q", got, err, want)
	}

	for i := range 2 {
		if err := r.Cleanup(rtLink); err != nil {
			t.Errorf("Cleanup #%d: %v", i+1, err)
		}
		if got, err := r.Leftovers(rtLink); err != nil || len(got) != 0 {
			t.Errorf("Leftovers after Cleanup #%d: %q, %v; want none", i+1, got, err)
		}
		if after := tp.state(t); after != before {
			t.Errorf("Cleanup #%d did not restore the namespace\n--- before:\n%s\n--- after:\n%s", i+1, before, after)
		}
	}
}

// TestRoutingOwnNamespace checks that NetNS 0 and netns.None() mean the
// caller's namespace: NewRouting runs on a thread moved into p.
func TestRoutingOwnNamespace(t *testing.T) {
	tp := rtNewTopo(t)
	ns, err := netns.GetFromName(tp.p)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	for _, tt := range []struct {
		name string
		ns   netns.NsHandle
	}{
		{"zero", 0},
		{"none", netns.None()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			type result struct {
				r   *Routing
				err error
			}
			done := make(chan result, 1)
			go func() {
				runtime.LockOSThread()
				// Unlocked only once back home; otherwise the thread
				// dies with this goroutine.
				home, err := netns.Get()
				if err != nil {
					done <- result{err: err}
					return
				}
				defer home.Close()
				if err := netns.Set(ns); err != nil {
					done <- result{err: err}
					return
				}
				r, err := NewRouting(RoutingOptions{NetNS: tt.ns, Table: 51999, Priority: 7300})
				if err := netns.Set(home); err != nil {
					if r != nil {
						r.Close()
					}
					done <- result{err: fmt.Errorf("back to the test's namespace: %v", err)}
					return
				}
				runtime.UnlockOSThread()
				done <- result{r, err}
			}()
			res := <-done
			if res.err != nil {
				t.Fatal(res.err)
			}
			r := res.r
			defer r.Close()

			// Read-only first: only p has a link called wrtv.
			if got, err := r.Leftovers(rtUplink); err != nil || !slices.Equal(got, []string{"link " + rtUplink}) {
				t.Fatalf("Leftovers(%s) = %q, %v: the socket is not in p", rtUplink, got, err)
			}
			if err := r.SetRules(true, false); err != nil {
				t.Fatal(err)
			}
			if got := tp.rules(t, "-4", 7300); len(got) != 2 {
				t.Errorf("rules in p: %q, want two", got)
			}
			if err := r.Cleanup(""); err != nil {
				t.Fatal(err)
			}
			if got := tp.rules(t, "-4", 7300); len(got) != 0 {
				t.Errorf("rules in p after Cleanup: %q, want none", got)
			}
		})
	}
}

func TestRoutingConcurrentUse(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tp := rtNewTopo(t)
	tp.addLink(t)
	r := tp.routing(t, RoutingOptions{})
	if err := r.SetupLink(rtLink, rtLinkAddrs, 1420); err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8*3*5)
	for range 8 {
		wg.Go(func() {
			for range 5 {
				errs <- r.SetRules(true, true)
				errs <- r.SetRoutes(rtLink, rtDefaults)
				_, err := r.Leftovers(rtLink)
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for _, family := range []string{"-4", "-6"} {
		if got := tp.rules(t, family, DefaultPriority); len(got) != 2 {
			t.Errorf("ip %s rule: %q, want two", family, got)
		}
		if got := tp.lines(t, family, "route", "show", "table", "51820"); len(got) != 1 {
			t.Errorf("ip %s route show table 51820: %q, want one route", family, got)
		}
	}
}
