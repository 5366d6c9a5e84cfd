package state

import (
	"fmt"
	"testing"
	"time"

	"github.com/warren-vpn/warren/config"
)

var (
	t0  = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now = t0.Add(time.Minute)
)

// Representative states, each with what it carries.
var (
	sDisconnected = Snapshot{State: Disconnected, Since: t0}
	sConnecting   = Snapshot{State: Connecting, Attempt: 3, Cause: CauseHandshakeTimeout, Since: t0}
	sConnected    = Snapshot{State: Connected, Endpoint: "192.0.2.1:51820", Since: t0}
	sDiscNothing  = Snapshot{State: Disconnecting, After: AfterNothing, Since: t0}
	sDiscRecon    = Snapshot{State: Disconnecting, After: AfterReconnect, Cause: CauseLivenessLost, Since: t0}
	sDiscBlock    = Snapshot{State: Disconnecting, After: AfterBlock, Cause: CauseTunnelDevice, Since: t0}
	sError        = Snapshot{State: Error, Cause: CauseInvalidConfig, Since: t0}
)

// Inputs, one of each kind (Failed twice: recoverable and not).
var (
	iConnect     = input{kind: inConnect}
	iDisconnect  = input{kind: inDisconnect}
	iReconnect   = input{kind: inReconnect}
	iReload      = input{kind: inReload, configs: []*config.Config{{Path: "new.conf"}}}
	iLockdown    = input{kind: inSetLockdown, lockdown: true}
	iUp          = input{kind: inUp, endpoint: "198.51.100.7:51820"}
	iDown        = input{kind: inDown, detail: "nothing received for 15s"}
	iFailedRec   = input{kind: inFailed, cause: CauseEndpointResolution, recoverable: true, detail: "no such host"}
	iFailedUnrec = input{kind: inFailed, cause: CauseTunnelDevice, recoverable: false, detail: "bind: address in use"}
	iClosed      = input{kind: inClosed}
	iTimeout     = input{kind: inAttemptTimeout}
)

func TestNextTable(t *testing.T) {
	tests := []struct {
		name      string
		from      Snapshot
		in        input
		want      Snapshot // Since is checked separately
		wantStart bool
		wantStop  bool
	}{
		{"Disconnected+Connect", sDisconnected, iConnect, Snapshot{State: Connecting, Attempt: 0}, true, false},

		{"Connecting+Up", sConnecting, iUp, Snapshot{State: Connected, Endpoint: "198.51.100.7:51820"}, false, false},
		{"Connecting+Failed(recoverable)", sConnecting, iFailedRec, Snapshot{State: Connecting, Attempt: 4, Cause: CauseEndpointResolution, Detail: "no such host"}, true, false},
		{"Connecting+timeout", sConnecting, iTimeout, Snapshot{State: Connecting, Attempt: 4, Cause: CauseHandshakeTimeout, Detail: "the attempt's deadline passed"}, true, false},
		{"Connecting+Failed(unrecoverable)", sConnecting, iFailedUnrec, Snapshot{State: Error, Cause: CauseTunnelDevice, Detail: "bind: address in use"}, false, true},
		{"Connecting+Disconnect", sConnecting, iDisconnect, Snapshot{State: Disconnecting, After: AfterNothing}, false, true},
		{"Connecting+Connect", sConnecting, iConnect, Snapshot{State: Disconnecting, After: AfterReconnect}, false, true},
		{"Connecting+Reconnect", sConnecting, iReconnect, Snapshot{State: Disconnecting, After: AfterReconnect}, false, true},
		{"Connecting+Reload", sConnecting, iReload, Snapshot{State: Disconnecting, After: AfterReconnect}, false, true},

		{"Connected+Down", sConnected, iDown, Snapshot{State: Disconnecting, After: AfterReconnect, Cause: CauseLivenessLost, Detail: "nothing received for 15s"}, false, true},
		{"Connected+Failed(unrecoverable)", sConnected, iFailedUnrec, Snapshot{State: Disconnecting, After: AfterBlock, Cause: CauseTunnelDevice, Detail: "bind: address in use"}, false, true},
		{"Connected+Disconnect", sConnected, iDisconnect, Snapshot{State: Disconnecting, After: AfterNothing}, false, true},
		{"Connected+Reconnect", sConnected, iReconnect, Snapshot{State: Disconnecting, After: AfterReconnect}, false, true},
		{"Connected+Reload", sConnected, iReload, Snapshot{State: Disconnecting, After: AfterReconnect}, false, true},

		{"Disconnecting(Nothing)+Closed", sDiscNothing, iClosed, Snapshot{State: Disconnected}, false, false},
		{"Disconnecting(Reconnect)+Closed", sDiscRecon, iClosed, Snapshot{State: Connecting, Attempt: 0, Cause: CauseLivenessLost}, true, false},
		{"Disconnecting(Block)+Closed", sDiscBlock, iClosed, Snapshot{State: Error, Cause: CauseTunnelDevice}, false, false},
		{"Disconnecting(Nothing)+Connect", sDiscNothing, iConnect, Snapshot{State: Disconnecting, After: AfterReconnect}, false, false},
		{"Disconnecting(Block)+Reconnect", sDiscBlock, iReconnect, Snapshot{State: Disconnecting, After: AfterReconnect}, false, false},
		{"Disconnecting(Nothing)+Reload", sDiscNothing, iReload, Snapshot{State: Disconnecting, After: AfterReconnect}, false, false},
		{"Disconnecting(Reconnect)+Disconnect", sDiscRecon, iDisconnect, Snapshot{State: Disconnecting, After: AfterNothing}, false, false},
		{"Disconnecting(Block)+Disconnect", sDiscBlock, iDisconnect, Snapshot{State: Disconnecting, After: AfterNothing}, false, false},
		{"Disconnecting(Reconnect)+Failed(unrecoverable)", sDiscRecon, iFailedUnrec, Snapshot{State: Disconnecting, After: AfterBlock, Cause: CauseTunnelDevice, Detail: "bind: address in use"}, false, false},
		{"Disconnecting(Block)+Failed(unrecoverable)", sDiscBlock, iFailedUnrec, Snapshot{State: Disconnecting, After: AfterBlock, Cause: CauseTunnelDevice, Detail: "bind: address in use"}, false, false},

		{"Error+Connect", sError, iConnect, Snapshot{State: Connecting, Attempt: 0}, true, false},
		{"Error+Reconnect", sError, iReconnect, Snapshot{State: Connecting, Attempt: 0}, true, false},
		{"Error+Disconnect", sError, iDisconnect, Snapshot{State: Disconnecting, After: AfterNothing}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, eff := next(tt.from, tt.in, now)
			wantSince := tt.from.Since
			if got.State != tt.from.State || got.Attempt != tt.from.Attempt {
				wantSince = now
			}
			if got.Since != wantSince {
				t.Errorf("Since = %v, want %v", got.Since, wantSince)
			}
			got.Since = time.Time{}
			if got != tt.want {
				t.Errorf("next(%v, %v) = %+v, want %+v", tt.from, tt.in.kind, got, tt.want)
			}
			if eff.start != tt.wantStart || eff.stop != tt.wantStop {
				t.Errorf("effects start=%v stop=%v, want start=%v stop=%v", eff.start, eff.stop, tt.wantStart, tt.wantStop)
			}
		})
	}
}

// TestNextLeavesTheRest checks every (state, input) pair that is not a row of
// the table: the state, and all it carries, stays as it is, and nothing is
// started or stopped. The listed pairs are written out here independently of
// next's switch.
func TestNextLeavesTheRest(t *testing.T) {
	states := map[string]Snapshot{
		"Disconnected":             sDisconnected,
		"Disconnected(lockdown)":   {State: Disconnected, Lockdown: true, Since: t0},
		"Connecting":               sConnecting,
		"Connected":                sConnected,
		"Disconnecting(Nothing)":   sDiscNothing,
		"Disconnecting(Reconnect)": sDiscRecon,
		"Disconnecting(Block)":     sDiscBlock,
		"Error":                    sError,
		"Error(block failed)":      {State: Error, Cause: CauseFirewall, BlockFailed: true, Since: t0},
	}
	inputs := map[string]input{
		"Connect": iConnect, "Disconnect": iDisconnect, "Reconnect": iReconnect,
		"Reload": iReload, "Up": iUp, "Down": iDown, "Failed(recoverable)": iFailedRec,
		"Failed(unrecoverable)": iFailedUnrec, "Closed": iClosed, "AttemptTimeout": iTimeout,
	}
	listed := map[string]map[string]bool{
		"Disconnected":             {"Connect": true},
		"Disconnected(lockdown)":   {"Connect": true},
		"Connecting":               {"Up": true, "Failed(recoverable)": true, "AttemptTimeout": true, "Failed(unrecoverable)": true, "Disconnect": true, "Connect": true, "Reconnect": true, "Reload": true},
		"Connected":                {"Down": true, "Failed(unrecoverable)": true, "Disconnect": true, "Reconnect": true, "Reload": true},
		"Disconnecting(Nothing)":   {"Closed": true, "Connect": true, "Reconnect": true, "Reload": true},
		"Disconnecting(Reconnect)": {"Closed": true, "Connect": true, "Reconnect": true, "Reload": true, "Disconnect": true, "Failed(unrecoverable)": true},
		"Disconnecting(Block)":     {"Closed": true, "Connect": true, "Reconnect": true, "Reload": true, "Disconnect": true, "Failed(unrecoverable)": true},
		"Error":                    {"Connect": true, "Reconnect": true, "Disconnect": true},
		"Error(block failed)":      {"Connect": true, "Reconnect": true, "Disconnect": true},
	}
	n := 0
	for sname, s := range states {
		for iname, in := range inputs {
			if listed[sname][iname] {
				continue
			}
			n++
			t.Run(fmt.Sprintf("%s+%s", sname, iname), func(t *testing.T) {
				got, eff := next(s, in, now)
				if got != s {
					t.Errorf("state changed: %+v -> %+v", s, got)
				}
				if eff.start || eff.stop {
					t.Errorf("effects start=%v stop=%v, want none", eff.start, eff.stop)
				}
			})
		}
	}
	if n < 40 {
		t.Fatalf("only %d unlisted pairs checked; the sets above are wrong", n)
	}
}

// Disconnecting(Nothing) + Disconnect is a row of the table whose result is
// the same state: it must not count as a transition.
func TestNextDisconnectingNothingDisconnect(t *testing.T) {
	got, eff := next(sDiscNothing, iDisconnect, now)
	if got != sDiscNothing || eff.start || eff.stop {
		t.Fatalf("got %+v %+v", got, eff)
	}
}

func TestNextReloadAlwaysReplacesConfig(t *testing.T) {
	for _, s := range []Snapshot{sDisconnected, sConnecting, sConnected, sDiscNothing, sDiscRecon, sError} {
		_, eff := next(s, iReload, now)
		if len(eff.configs) != 1 || eff.configs[0] != iReload.configs[0] {
			t.Errorf("%v: Reload did not replace the config", s)
		}
	}
	for _, in := range []input{iConnect, iDisconnect, iUp, iClosed} {
		if _, eff := next(sConnecting, in, now); eff.configs != nil {
			t.Errorf("%v replaced the config", in.kind)
		}
	}
}

func TestNextSetLockdown(t *testing.T) {
	for _, s := range []Snapshot{sDisconnected, sConnecting, sConnected, sDiscBlock, sError} {
		got, eff := next(s, iLockdown, now)
		want := s
		want.Lockdown = true
		if got != want || eff.start || eff.stop {
			t.Errorf("SetLockdown(true) in %v: got %+v, effects %+v", s, got, eff)
		}
		// The flag survives transitions.
		if after, _ := next(got, iDisconnect, now); !after.Lockdown {
			t.Errorf("Lockdown lost after Disconnect from %v", s)
		}
	}
}

func TestAttemptDeadline(t *testing.T) {
	want := []time.Duration{4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second, 15 * time.Second}
	for n, w := range want {
		if got := AttemptDeadline(n); got != w {
			t.Errorf("AttemptDeadline(%d) = %v, want %v", n, got, w)
		}
	}
	if got := AttemptDeadline(1000); got != MaxAttemptDeadline {
		t.Errorf("AttemptDeadline(1000) = %v", got)
	}
}

func TestCauseRecoverable(t *testing.T) {
	for _, c := range []Cause{CauseEndpointResolution, CauseHandshakeTimeout, CauseVerificationTimeout, CauseNetworkUnreachable, CauseLivenessLost} {
		if !c.Recoverable() {
			t.Errorf("%s should be recoverable", c)
		}
	}
	for _, c := range []Cause{CauseInvalidConfig, CauseTunnelDevice, CauseFirewall, CauseRouting, CauseDNSConfig} {
		if c.Recoverable() {
			t.Errorf("%s should not be recoverable", c)
		}
	}
}

func TestSnapshotBlocked(t *testing.T) {
	if err := sConnected.Blocked(); err != nil {
		t.Fatalf("Connected is blocked: %v", err)
	}
	err := sConnecting.Blocked()
	be, ok := err.(*BlockedError)
	if !ok || be.State != Connecting || be.Cause != CauseHandshakeTimeout {
		t.Fatalf("Blocked() = %#v", err)
	}
	if got, want := err.Error(), "blocked: tunnel is connecting (handshake-timeout)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
