//go:build linux

package hostmode

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Defaults for the zero fields of RoutingOptions.
const (
	// DefaultTable is warren's routing table: the first one wg-quick picks.
	DefaultTable = 51820

	// DefaultMark is the fwmark (SO_MARK) on warren's own WireGuard socket:
	// "WR" in ASCII.
	DefaultMark = 0x5752

	// DefaultPriority is the priority of warren's first rule; the second
	// goes at DefaultPriority+1. Both come before the main table's rule
	// (32766) and clear of the 5210-5270 that Tailscale uses.
	DefaultPriority = 5200
)

const (
	// rtMainRulePriority is the priority of the kernel's own
	// "from all lookup main" rule; warren's rules must come before it.
	rtMainRulePriority = 32766

	// rtAddrGenModeNone is IN6_ADDR_GEN_MODE_NONE from <linux/if_link.h>:
	// the kernel generates no IPv6 link-local address for the link.
	rtAddrGenModeNone = 1

	// rtRuleProtocol is the protocol (FRA_PROTOCOL) of warren's rules:
	// "proto 87" in "ip rule show", 87 being "W". The kernel adds and
	// deletes a rule by the attributes given, and takes a rule given
	// without a source to match any source: without a protocol of its
	// own, deleting warren's "from all" rule would delete someone else's
	// "from 192.0.2.0/24" rule at the same priority, if listed first, and
	// adding it would fail as a duplicate of that rule.
	rtRuleProtocol = 87

	// rtNetlinkTimeout bounds every netlink request, so that a wedged
	// kernel answer cannot stall the state machine.
	rtNetlinkTimeout = 10 * time.Second

	// rtDumpRetries is how many times a netlink dump interrupted by a
	// concurrent change (NLM_F_DUMP_INTR) is tried again.
	rtDumpRetries = 5
)

var errRoutingClosed = errors.New("hostmode: routing closed")

// RoutingOptions say where and how Routing works. Zero fields mean the
// documented defaults.
type RoutingOptions struct {
	// NetNS is the network namespace to work in. netns.None() (-1) and 0
	// both mean the caller's own. It is used only while NewRouting runs:
	// the caller keeps it and may close it once NewRouting returns.
	NetNS netns.NsHandle

	// Table is warren's routing table. 0 means DefaultTable. The kernel's
	// own tables (253 default, 254 main, 255 local) are refused.
	Table int

	// Mark is the fwmark of warren's own WireGuard socket: packets that
	// carry it skip Table and follow the main table to the endpoint.
	// 0 means DefaultMark.
	Mark uint32

	// Priority is where the rules go: warren owns the rule priorities
	// Priority and Priority+1, and nothing else. 0 means DefaultPriority.
	// Both must come before the main table's rule at 32766.
	Priority int
}

// Routing gives the tunnel link its addresses and installs wg-quick's
// policy routing for it, in one network namespace, over one netlink socket.
//
// What it owns: in each family, the two rules at Priority and Priority+1
// that have the shape SetRules gives them, protocol 87 included; every
// route in Table, which therefore must not be shared; and the link it is
// named in each call. It never touches other rules (even at its
// priorities), other tables, other links, sysctls or the firewall, and it
// does not create the link: the tunnel does.
//
// The methods are safe for concurrent use; they run one at a time.
type Routing struct {
	table int
	mark  uint32
	prio  int

	// mu guards h, which is nil once closed. netlink.Handle is not safe for
	// concurrent use.
	mu sync.Mutex
	h  *netlink.Handle
}

// NewRouting opens a netlink socket in o.NetNS. Close releases it.
func NewRouting(o RoutingOptions) (*Routing, error) {
	r := &Routing{table: o.Table, mark: o.Mark, prio: o.Priority}
	if r.table == 0 {
		r.table = DefaultTable
	}
	if r.mark == 0 {
		r.mark = DefaultMark
	}
	if r.prio == 0 {
		r.prio = DefaultPriority
	}
	switch {
	case r.table < 0 || int64(r.table) > math.MaxUint32:
		return nil, fmt.Errorf("hostmode: routing table %d out of range", r.table)
	case r.table == unix.RT_TABLE_DEFAULT || r.table == unix.RT_TABLE_MAIN || r.table == unix.RT_TABLE_LOCAL:
		return nil, fmt.Errorf("hostmode: routing table %d belongs to the kernel", r.table)
	case r.prio < 1 || r.prio+1 >= rtMainRulePriority:
		return nil, fmt.Errorf("hostmode: rule priority %d not in 1..%d", r.prio, rtMainRulePriority-2)
	}

	ns := o.NetNS
	if ns == 0 {
		ns = netns.None()
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("hostmode: netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(rtNetlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("hostmode: netlink socket timeout: %w", err)
	}
	r.h = h
	return r, nil
}

// Close releases the netlink socket. It changes nothing in the namespace
// and is safe to call more than once; other methods then fail.
func (r *Routing) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h != nil {
		r.h.Close()
		r.h = nil
	}
	return nil
}

// SetupLink gives the existing link name exactly the addresses addrs (it
// removes any other, the kernel's IPv6 link-local address included) and
// the MTU, and brings it up. IPv6 addresses skip duplicate address
// detection (IFA_F_NODAD), so they are usable at once. The kernel is told
// to generate no link-local address for the link: nothing on a tunnel
// speaks neighbour discovery.
func (r *Routing) SetupLink(name string, addrs []netip.Prefix, mtu int) error {
	want := make(map[netip.Prefix]bool, len(addrs))
	hasV6 := false
	for _, p := range addrs {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return fmt.Errorf("hostmode: link %s: invalid address %v", name, p)
		}
		want[p] = true
		hasV6 = hasV6 || p.Addr().Is6()
	}
	switch {
	case mtu < 68: // the IPv4 minimum, RFC 791
		return fmt.Errorf("hostmode: link %s: invalid MTU %d", name, mtu)
	case hasV6 && mtu < 1280: // the kernel would drop the IPv6 addresses
		return fmt.Errorf("hostmode: link %s: MTU %d is below IPv6's minimum of 1280", name, mtu)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return errRoutingClosed
	}
	link, err := r.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("hostmode: link %s: %w", name, err)
	}
	if link.Attrs().MTU != mtu {
		if err := r.h.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("hostmode: link %s: set MTU %d: %w", name, mtu, err)
		}
	}
	// EAFNOSUPPORT: this kernel has no IPv6 at all, so no link-local either.
	err = r.h.LinkSetIP6AddrGenMode(link, rtAddrGenModeNone)
	if err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("hostmode: link %s: disable IPv6 link-local address: %w", name, err)
	}

	present, err := rtDump(func() ([]netlink.Addr, error) {
		return r.h.AddrList(link, netlink.FAMILY_ALL)
	})
	if err != nil {
		return fmt.Errorf("hostmode: link %s: list addresses: %w", name, err)
	}
	for _, a := range present {
		if a.Peer == nil && want[rtPrefix(a.IPNet)] {
			continue
		}
		if err := r.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("hostmode: link %s: remove address %v: %w", name, a.IPNet, err)
		}
	}
	// Replace rather than add: it is idempotent, and it sets the flags of
	// an address that was already there.
	for _, p := range addrs {
		a := &netlink.Addr{IPNet: rtIPNet(p)}
		if p.Addr().Is4() {
			a.Broadcast = net.IPv4zero // none, as with "ip addr add"
		} else {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := r.h.AddrReplace(link, a); err != nil {
			return fmt.Errorf("hostmode: link %s: add address %v: %w", name, p, err)
		}
	}

	if err := r.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("hostmode: link %s: set up: %w", name, err)
	}
	return nil
}

// SetRules installs, in each family asked for, the two rules wg-quick
// installs for a default route:
//
//	Priority:   from all lookup main suppress_prefixlength 0 proto 87
//	Priority+1: not from all fwmark Mark lookup Table proto 87
//
// The first lets every route in the main table that is more specific than
// a default route win; the second sends everything else, except warren's
// own marked packets, to Table. Protocol 87 marks the rules as warren's,
// so that adding or deleting them can never hit someone else's rule at the
// same priority.
//
// SetRules is idempotent, and it removes warren's rules from a family not
// asked for.
func (r *Routing) SetRules(v4, v6 bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return errRoutingClosed
	}
	if err := r.setRulesLocked(netlink.FAMILY_V4, v4); err != nil {
		return err
	}
	return r.setRulesLocked(netlink.FAMILY_V6, v6)
}

func (r *Routing) setRulesLocked(family int, want bool) error {
	present, err := r.rulesLocked(family)
	if err != nil {
		return err
	}
	if !want {
		// Backwards, for the reason below.
		for _, rl := range slices.Backward(present) {
			if err := r.h.RuleDel(&rl); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("hostmode: remove %s: %w", r.describeRule(rl), err)
			}
		}
		return nil
	}
	var have [2]bool // indexed by priority - r.prio
	for _, rl := range present {
		have[rl.Priority-r.prio] = true
	}
	// In this order: the suppressing rule is harmless alone, while the
	// fwmark rule alone would send the main table's specific routes to
	// Table too.
	for i, rl := range r.wantRules(family) {
		if have[i] {
			continue
		}
		if err := r.h.RuleAdd(rl); err != nil {
			return fmt.Errorf("hostmode: add %s: %w", r.describeRule(*rl), err)
		}
	}
	return nil
}

// wantRules returns warren's two rules for family, in priority order.
func (r *Routing) wantRules(family int) [2]*netlink.Rule {
	suppress := netlink.NewRule()
	suppress.Family = family
	suppress.Priority = r.prio
	suppress.Table = unix.RT_TABLE_MAIN
	suppress.SuppressPrefixlen = 0
	suppress.Protocol = rtRuleProtocol

	fwmark := netlink.NewRule()
	fwmark.Family = family
	fwmark.Priority = r.prio + 1
	fwmark.Invert = true
	fwmark.Mark = r.mark // no mask: the kernel matches all 32 bits
	fwmark.Table = r.table
	fwmark.Protocol = rtRuleProtocol

	return [2]*netlink.Rule{suppress, fwmark}
}

// isWarrenRule reports whether rl is one of the rules SetRules installs:
// the same priority, action, table, mark and protocol, and no other
// selector.
func (r *Routing) isWarrenRule(rl netlink.Rule) bool {
	if rl.Protocol != rtRuleProtocol {
		return false
	}
	if rl.Src != nil || rl.Dst != nil || rl.IifName != "" || rl.OifName != "" ||
		rl.Tos != 0 || rl.TunID != 0 || rl.IPProto != 0 || rl.Dport != nil ||
		rl.Sport != nil || rl.UIDRange != nil || rl.Goto >= 0 || rl.Flow >= 0 ||
		rl.SuppressIfgroup >= 0 {
		return false
	}
	switch rl.Priority {
	case r.prio:
		return !rl.Invert && rl.Table == unix.RT_TABLE_MAIN && rl.SuppressPrefixlen == 0 &&
			rl.Mark == 0 && (rl.Mask == nil || *rl.Mask == 0)
	case r.prio + 1:
		return rl.Invert && rl.Table == r.table && rl.SuppressPrefixlen < 0 &&
			rl.Mark == r.mark && (rl.Mask == nil || *rl.Mask == math.MaxUint32)
	}
	return false
}

// rulesLocked returns warren's rules present in family.
func (r *Routing) rulesLocked(family int) ([]netlink.Rule, error) {
	all, err := rtDump(func() ([]netlink.Rule, error) { return r.h.RuleList(family) })
	if err != nil {
		return nil, fmt.Errorf("hostmode: list %s rules: %w", rtFamilyName(family), err)
	}
	var ours []netlink.Rule
	for _, rl := range all {
		if r.isWarrenRule(rl) {
			ours = append(ours, rl)
		}
	}
	return ours, nil
}

// describeRule says rl the way "ip rule show" does.
func (r *Routing) describeRule(rl netlink.Rule) string {
	fam := rtFamilyName(rl.Family)
	if rl.Invert {
		return fmt.Sprintf("%s rule %d: not from all fwmark %#x lookup %d proto %d", fam, rl.Priority, rl.Mark, rl.Table, rl.Protocol)
	}
	return fmt.Sprintf("%s rule %d: from all lookup main suppress_prefixlength 0 proto %d", fam, rl.Priority, rl.Protocol)
}

// SetRoutes makes Table hold exactly one route to each of prefixes, via
// link name; with no prefixes, Table is left empty and name is not looked
// up. Prefixes are taken as networks: host bits are ignored. Routes in
// Table that are not wanted, whatever their link or type, are removed.
//
// warren calls it with the peers' AllowedIPs (0.0.0.0/0 and ::/0) only
// once Connected, and with none otherwise.
func (r *Routing) SetRoutes(name string, prefixes []netip.Prefix) error {
	want := make(map[netip.Prefix]bool, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return fmt.Errorf("hostmode: invalid route prefix %v", p)
		}
		want[p.Masked()] = true
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return errRoutingClosed
	}
	index := 0
	if len(want) > 0 {
		link, err := r.h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("hostmode: link %s: %w", name, err)
		}
		index = link.Attrs().Index
	}

	have := make(map[netip.Prefix]bool, len(want))
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		present, err := r.routesLocked(family)
		if err != nil {
			return err
		}
		for _, rt := range present {
			p := rtPrefix(rt.Dst)
			if want[p] && !have[p] && rt.LinkIndex == index && rt.Gw == nil &&
				len(rt.MultiPath) == 0 && rt.Type == unix.RTN_UNICAST {
				have[p] = true
				continue
			}
			if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("hostmode: remove %s: %w", r.describeRouteLocked(rt), err)
			}
		}
	}

	for _, p := range prefixes {
		p = p.Masked()
		if have[p] {
			continue
		}
		have[p] = true
		rt := &netlink.Route{LinkIndex: index, Dst: rtIPNet(p), Table: r.table}
		if p.Addr().Is4() {
			rt.Scope = netlink.SCOPE_LINK // as "ip route add PREFIX dev NAME" does
		}
		if err := r.h.RouteAdd(rt); err != nil {
			return fmt.Errorf("hostmode: add route %v dev %s table %d: %w", p, name, r.table, err)
		}
	}
	return nil
}

// routesLocked returns every route in Table in family.
func (r *Routing) routesLocked(family int) ([]netlink.Route, error) {
	routes, err := rtDump(func() ([]netlink.Route, error) {
		return r.h.RouteListFiltered(family, &netlink.Route{Table: r.table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("hostmode: list %s routes in table %d: %w", rtFamilyName(family), r.table, err)
	}
	return routes, nil
}

// describeRouteLocked says rt much as "ip route show" does.
func (r *Routing) describeRouteLocked(rt netlink.Route) string {
	s := fmt.Sprintf("%s route %v", rtFamilyName(rt.Family), rtPrefix(rt.Dst))
	if rt.Gw != nil {
		s += fmt.Sprintf(" via %v", rt.Gw)
	}
	if rt.LinkIndex > 0 {
		dev := fmt.Sprintf("if%d", rt.LinkIndex)
		if link, err := r.h.LinkByIndex(rt.LinkIndex); err == nil {
			dev = link.Attrs().Name
		}
		s += " dev " + dev
	}
	return s + fmt.Sprintf(" table %d", rt.Table)
}

// Cleanup removes what warren installs: its rules (only those at Priority
// and Priority+1 with warren's shape, table, mark and protocol), every
// route in Table, and link name if it exists. Nothing else is touched.
// With nothing there it does nothing and returns nil. It goes on after a
// failure, and returns all of them.
func (r *Routing) Cleanup(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return errRoutingClosed
	}
	var errs []error // errors.Join drops the nils
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := r.rulesLocked(family)
		errs = append(errs, err)
		for _, rl := range slices.Backward(rules) { // as in setRulesLocked
			if err := r.h.RuleDel(&rl); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("hostmode: remove %s: %w", r.describeRule(rl), err))
			}
		}
		routes, err := r.routesLocked(family)
		errs = append(errs, err)
		for _, rt := range routes {
			if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("hostmode: remove %s: %w", r.describeRouteLocked(rt), err))
			}
		}
	}
	link, err := r.linkLocked(name)
	errs = append(errs, err)
	if link != nil {
		if err := r.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("hostmode: delete link %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Leftovers describes, one line each, what of warren's is present: its
// rules, the routes in Table and link name. None means clean.
func (r *Routing) Leftovers(name string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil, errRoutingClosed
	}
	var found []string
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := r.rulesLocked(family)
		if err != nil {
			return nil, err
		}
		for _, rl := range rules {
			found = append(found, r.describeRule(rl))
		}
		routes, err := r.routesLocked(family)
		if err != nil {
			return nil, err
		}
		for _, rt := range routes {
			found = append(found, r.describeRouteLocked(rt))
		}
	}
	link, err := r.linkLocked(name)
	if err != nil {
		return nil, err
	}
	if link != nil {
		found = append(found, "link "+name)
	}
	return found, nil
}

// linkLocked returns link name, or nil if there is none (or name is empty).
func (r *Routing) linkLocked(name string) (netlink.Link, error) {
	if name == "" {
		return nil, nil
	}
	link, err := r.h.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hostmode: link %s: %w", name, err)
	}
	return link, nil
}

// rtDump runs a netlink dump, again if a concurrent change interrupted
// it: an interrupted dump may have missed entries.
func rtDump[T any](list func() ([]T, error)) ([]T, error) {
	for i := 1; ; i++ {
		res, err := list()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < rtDumpRetries {
			continue
		}
		return res, err
	}
}

func rtFamilyName(family int) string {
	if family == netlink.FAMILY_V6 {
		return "ipv6"
	}
	return "ipv4"
}

// rtIPNet converts p, keeping its host bits, for netlink.
func rtIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// rtPrefix converts an address or route destination from netlink.
func rtPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}
