package control

import (
	"time"

	"github.com/warren-vpn/warren/state"
)

// Status is the JSON of /v1/status, of the commands' answers and of each
// event; the package documentation describes its fields.
type Status struct {
	State       string    `json:"state"`
	Cause       string    `json:"cause"`
	Detail      string    `json:"detail"`
	Attempt     int       `json:"attempt"`
	After       string    `json:"after,omitempty"`
	Since       time.Time `json:"since"`
	Config      string    `json:"config"`
	Endpoint    string    `json:"endpoint"`
	Lockdown    bool      `json:"lockdown"`
	BlockFailed bool      `json:"block_failed"`
	// LastHandshake and HandshakeAgeSeconds are nil before the first
	// handshake of the tunnel that is up.
	LastHandshake       *time.Time `json:"last_handshake,omitempty"`
	HandshakeAgeSeconds *float64   `json:"handshake_age_seconds,omitempty"`
	BytesIn             uint64     `json:"bytes_in"`
	BytesOut            uint64     `json:"bytes_out"`
	Flows               int        `json:"flows"`
	Listeners           []Listener `json:"listeners"`
	Seq                 uint64     `json:"seq"`
}

// status is the Status of snap, with the statistics as they are now.
func (s *Server) status(snap state.Snapshot) Status {
	st := Status{
		State:       snap.State.String(),
		Cause:       string(snap.Cause),
		Detail:      snap.Detail,
		Attempt:     snap.Attempt,
		Since:       snap.Since,
		Config:      snap.Config,
		Endpoint:    snap.Endpoint,
		Lockdown:    snap.Lockdown,
		BlockFailed: snap.BlockFailed,
		Listeners:   []Listener{},
		Seq:         snap.Seq,
	}
	if snap.State == state.Disconnecting {
		st.After = snap.After.String()
	}
	if s.Stats != nil {
		ts := s.Stats()
		st.BytesIn, st.BytesOut = ts.RxBytes, ts.TxBytes
		if !ts.LastHandshake.IsZero() {
			last := ts.LastHandshake
			age := max(s.now().Sub(last), 0).Seconds()
			st.LastHandshake, st.HandshakeAgeSeconds = &last, &age
		}
	}
	if s.Flows != nil {
		st.Flows = s.Flows()
	}
	if s.Listeners != nil {
		if ls := s.Listeners(); ls != nil {
			st.Listeners = ls
		}
	}
	return st
}
