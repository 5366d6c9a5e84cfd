// Package control is warren's local API: status and commands over HTTP, a
// stream of state transitions, health and readiness probes, and Prometheus
// metrics.
//
// It owns the HTTP side only. It steers the tunnel through the small Machine
// interface (which *state.Machine satisfies) and reads tunnel statistics,
// live flows and listener addresses through functions it is handed; it knows
// nothing of WireGuard, gVisor or the proxies. Flags, and which addresses to
// serve on, belong to cmd/warren.
//
// The API is served on a unix socket (mode 0600, see ListenUnix) and,
// optionally, on TCP with a bearer token, which every path then needs
// (/healthz and /readyz too: 401 without it):
//
//	GET  /v1/status      the status JSON below
//	POST /v1/connect     200 and the status the command led to; 503 if the
//	                     state machine does not take it (it has shut down)
//	POST /v1/disconnect  likewise
//	POST /v1/reconnect   likewise
//	POST /v1/reload      likewise; 422 if the new config is invalid, 501 if
//	                     reloading is not supported
//	GET  /v1/events      text/event-stream of status, one event per transition
//	GET  /healthz        200 "ok" if the state machine answers within 2s
//	GET  /readyz         200 "ready" only when Connected with a handshake
//	                     younger than ReadyHandshakeAge
//	GET  /metrics        Prometheus text exposition (see Metrics); 404 if the
//	                     Server has none
//
// The status JSON is
//
//	{
//	  "state": "connected",          // disconnected, connecting, connected, disconnecting or error
//	  "cause": "",                   // why not (or no longer) connected, e.g. "handshake-timeout"; "" for none
//	  "detail": "",                  // a human-readable explanation of cause
//	  "attempt": 0,                  // the attempt number while connecting
//	  "after": "reconnect",          // only while disconnecting: what comes next, "nothing", "reconnect" or "block"
//	  "since": "2026-11-25T10:46:32.123456789Z", // when the state was entered (RFC 3339)
//	  "config": "/etc/warren/wg0.conf", // the config being tried or in use
//	  "endpoint": "203.0.113.7:51820",  // the peer endpoint while connected
//	  "lockdown": false,             // traffic is blocked in disconnected too
//	  "block_failed": false,         // in error: blocking itself failed, traffic may not be blocked
//	  "last_handshake": "2026-11-25T10:49:03Z", // omitted before the first handshake
//	  "handshake_age_seconds": 41.2, // omitted before the first handshake
//	  "bytes_in": 1234,              // received and sent by the tunnel that is up;
//	  "bytes_out": 5678,             //   a new tunnel starts again from 0
//	  "flows": 3,                    // live flows through the front-ends
//	  "listeners": [{"name": "socks5", "addr": "127.0.0.1:1080"}],
//	  "seq": 42                      // increases by one with every published snapshot
//	}
//
// Errors are {"error": "..."} with a fitting status code (and, from
// /v1/reload, "problems": one string per problem). A request with the wrong
// method gets 405 and an Allow header.
//
// Each event of /v1/events is "event: state", "id: <seq>" and "data: <status
// JSON>", its statistics as they were when the event was sent. The first
// event is the current status; then one follows every published snapshot
// (a client too slow to read may miss some: the seq shows the gap, and the
// latest always comes). A comment line (": keepalive") comes every 15 seconds so that
// proxies and clients can tell a quiet stream from a dead one.
package control
