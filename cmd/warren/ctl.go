package main

// This file holds the subcommands that talk to a running warren through its
// API (package control): status, connect, disconnect, reconnect and
// healthcheck.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/warren-vpn/warren/control"
)

const (
	// ctlTimeout bounds one request of status, connect, disconnect and
	// reconnect, and the whole of healthcheck.
	ctlTimeout = 5 * time.Second
	// watchRefresh is how often status --watch redraws, so that the
	// handshake age and the traffic move.
	watchRefresh = 2 * time.Second
)

// apiFlags are the flags of the commands that talk to the API.
type apiFlags struct {
	api       string
	tokenFile string
}

func (f *apiFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	def := "unix:" + control.DefaultSocketPath(getenv, os.Getuid())
	fs.StringVar(&f.api, "api", def, "address of warren's API: unix:PATH or tcp:HOST:PORT")
	fs.StringVar(&f.tokenFile, "api-token-file", "", "file holding the API's bearer token (one line; or the token itself in "+envAPIToken+"); needed for a tcp: address")
}

// client returns a client of the API the flags name, with the token from
// --api-token-file or WARREN_API_TOKEN.
func (f *apiFlags) client(getenv func(string) string) (*apiClient, error) {
	network, addr, err := control.ParseAPIAddr(f.api)
	if err != nil {
		return nil, fmt.Errorf("--api: %v", err)
	}
	token, err := apiToken(f.tokenFile, getenv)
	if err != nil {
		return nil, err
	}
	if network == "tcp" && token == "" {
		return nil, fmt.Errorf("--api %s needs a token: give --api-token-file FILE (or set %s), or set %s", f.api, envName("api-token-file"), envAPIToken)
	}
	return newAPIClient(f.api, network, addr, token), nil
}

// apiClient talks to warren's API. It dials only the API's address, never
// a proxy from the environment.
type apiClient struct {
	api   string // as given: "unix:/run/warren/warren.sock"
	base  string // URL prefix: "http://warren"
	token string
	http  *http.Client
}

func newAPIClient(api, network, addr, token string) *apiClient {
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &apiDialError{err}
			}
			return c, nil
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 10 * time.Second,
	}
	base := "http://warren"
	if network == "tcp" {
		base = "http://" + addr
	}
	return &apiClient{api: api, base: base, token: token, http: &http.Client{Transport: tr}}
}

// close lets go of the client's idle connection.
func (c *apiClient) close() { c.http.CloseIdleConnections() }

// apiDialError marks a failure to reach the API at all.
type apiDialError struct{ err error }

func (e *apiDialError) Error() string { return e.err.Error() }
func (e *apiDialError) Unwrap() error { return e.err }

// do sends a request and returns the response if its status is 2xx, or else
// an error that says why.
func (c *apiClient) do(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.explain(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(body))
	var e control.ErrorResponse
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
		if len(e.Problems) > 0 {
			msg += ":\n  " + strings.Join(e.Problems, "\n  ") + "\n"
		}
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, fmt.Errorf("the API at %s refused the token (%s): check --api-token-file or %s", c.api, msg, envAPIToken)
	}
	return nil, fmt.Errorf("%s (%s)", msg, resp.Status)
}

// explain turns a failed request into an error a user can act on.
func (c *apiClient) explain(err error) error {
	var de *apiDialError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no answer from the API at %s: %w", c.api, err)
	case !errors.As(err, &de):
		return fmt.Errorf("API at %s: %w", c.api, err)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf(`no warren is running at %s (start one with "warren up", or point --api at it)`, c.api)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("not allowed to use the API at %s: it belongs to another user (run as that user, or as root)", c.api)
	}
	return fmt.Errorf("cannot reach the API at %s: %v", c.api, de.err)
}

// call makes a request whose answer is a status, and returns it with its
// JSON as the API sent it.
func (c *apiClient) call(ctx context.Context, method, path string) (control.Status, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	resp, err := c.do(ctx, method, path)
	if err != nil {
		return control.Status{}, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return control.Status{}, nil, c.explain(err)
	}
	var st control.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return control.Status{}, nil, fmt.Errorf("API at %s: bad status: %v", c.api, err)
	}
	return st, bytes.TrimSpace(body), nil
}

// ctlFlags parses the flags of a command that talks to the API, with extra
// registering the command's own, and returns its client.
func ctlFlags(name string, args []string, getenv func(string) string, stderr io.Writer, extra func(*flag.FlagSet)) (*apiClient, error) {
	fs := newFlagSet(name, stderr)
	var af apiFlags
	af.register(fs, getenv)
	if extra != nil {
		extra(fs)
	}
	if err := parseFlags(fs, args, getenv, nil); err != nil {
		return nil, err
	}
	return af.client(getenv)
}

// cmdStatus is `warren status`: the tunnel's state, on one screen or as
// JSON, once or (with --watch) until ctx ends.
func cmdStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var asJSON, watch bool
	c, err := ctlFlags("status", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print the API's JSON")
		fs.BoolVar(&watch, "watch", false, "follow the state and print it again on every change (with --json, one line per change) until interrupted")
	})
	if err != nil {
		return err
	}
	defer c.close()
	if watch {
		return watchStatus(ctx, c, asJSON, stdout)
	}
	st, raw, err := c.call(ctx, http.MethodGet, "/v1/status")
	if err != nil {
		return err
	}
	if asJSON {
		fmt.Fprintf(stdout, "%s\n", raw)
		return nil
	}
	fmt.Fprint(stdout, formatStatus(st, time.Now()))
	return nil
}

// watchStatus follows the API's events until ctx ends: it prints every
// event and, unless asJSON, redraws the screen every watchRefresh.
func watchStatus(ctx context.Context, c *apiClient, asJSON bool, stdout io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.do(ctx, http.MethodGet, "/v1/events")
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	type event struct {
		raw []byte
		st  control.Status
	}
	events := make(chan event)
	ended := make(chan error, 1)
	go func() {
		defer resp.Body.Close()
		ended <- readEvents(resp.Body, func(data []byte) error {
			var st control.Status
			if err := json.Unmarshal(data, &st); err != nil {
				return fmt.Errorf("API at %s: bad event: %v", c.api, err)
			}
			select {
			case events <- event{data, st}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	// Wait for the reader before returning: cancel ends its request.
	readerDone := false
	defer func() {
		cancel()
		if !readerDone {
			<-ended
		}
	}()

	// On a terminal, each screen replaces the last; elsewhere, a blank line
	// separates them.
	inPlace, drawn := isTerminal(stdout), false
	draw := func(st control.Status) {
		switch {
		case inPlace:
			fmt.Fprint(stdout, "\x1b[H\x1b[2J")
		case drawn:
			fmt.Fprintln(stdout)
		}
		drawn = true
		fmt.Fprint(stdout, formatStatus(st, time.Now()))
	}
	tick := time.NewTicker(watchRefresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-ended:
			readerDone = true
			if ctx.Err() != nil {
				return nil
			}
			if err == nil || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("the API at %s ended the event stream: warren stopped", c.api)
			}
			return c.explain(err)
		case ev := <-events:
			if asJSON {
				fmt.Fprintf(stdout, "%s\n", ev.raw)
			} else {
				draw(ev.st)
			}
		case <-tick.C:
			if asJSON {
				continue
			}
			st, _, err := c.call(ctx, http.MethodGet, "/v1/status")
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			draw(st)
		}
	}
}

// readEvents reads a text/event-stream and calls f with the data of each
// event, until the stream ends (nil) or f fails.
func readEvents(r io.Reader, f func(data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if data != nil {
				if err := f(data); err != nil {
					return err
				}
				data = nil
			}
		case bytes.HasPrefix(line, []byte("data:")):
			v := bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, v...)
		}
		// Comments (keepalives), event: and id: lines need nothing.
	}
	return sc.Err()
}

// isTerminal reports whether w is a terminal, where status --watch redraws
// in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// formatStatus renders st as the screen of warren status.
func formatStatus(st control.Status, now time.Time) string {
	var b strings.Builder
	line := func(label, format string, a ...any) {
		fmt.Fprintf(&b, "%-12s%s\n", label+":", fmt.Sprintf(format, a...))
	}
	state := st.State
	if st.State == "disconnecting" && st.After != "" && st.After != "nothing" {
		state += ", then " + st.After
	}
	if st.Since.IsZero() {
		line("state", "%s", state)
	} else {
		line("state", "%s (since %s, %s ago)", state, st.Since.Local().Format(time.DateTime), ago(now.Sub(st.Since)))
	}
	if st.BlockFailed {
		line("warning", "blocking failed: traffic may not be blocked")
	}
	if st.Cause != "" {
		if st.Detail != "" {
			line("cause", "%s: %s", st.Cause, st.Detail)
		} else {
			line("cause", "%s", st.Cause)
		}
	}
	if st.State == "connecting" {
		line("attempt", "%d", st.Attempt)
	}
	if st.Config != "" {
		line("config", "%s", st.Config)
	}
	if st.Endpoint != "" {
		line("endpoint", "%s", st.Endpoint)
	}
	if st.LastHandshake != nil {
		line("handshake", "%s ago", ago(now.Sub(*st.LastHandshake)))
	} else if st.State == "connected" || st.State == "connecting" {
		line("handshake", "none yet")
	}
	if st.State == "connected" || st.BytesIn > 0 || st.BytesOut > 0 {
		line("traffic", "received %s, sent %s", humanBytes(st.BytesIn), humanBytes(st.BytesOut))
	}
	line("flows", "%d live", st.Flows)
	if len(st.Listeners) > 0 {
		ls := make([]string, len(st.Listeners))
		for i, l := range st.Listeners {
			ls[i] = l.Name + " " + l.Addr
		}
		line("listeners", "%s", strings.Join(ls, ", "))
	} else {
		line("listeners", "none")
	}
	if st.Lockdown {
		line("lockdown", "on: traffic is blocked while disconnected too")
	}
	return b.String()
}

// ago renders a duration to the second: "41s", "3m12s", "26h3m0s".
func ago(d time.Duration) string {
	return max(d, 0).Round(time.Second).String()
}

// humanBytes renders n in decimal units: "512 B", "1.2 GB".
func humanBytes(n uint64) string {
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, unit := range []string{"kB", "MB", "GB", "TB"} {
		v /= 1000
		if v < 999.95 || unit == "TB" {
			return fmt.Sprintf("%.1f %s", v, unit)
		}
	}
	panic("unreachable")
}

// describeStatus says in one line what state st is in, e.g.
// "connecting (attempt 3, handshake-timeout)".
func describeStatus(st control.Status) string {
	var extra []string
	switch st.State {
	case "connecting":
		extra = append(extra, fmt.Sprintf("attempt %d", st.Attempt))
	case "connected":
		if st.Endpoint != "" {
			extra = append(extra, "endpoint "+st.Endpoint)
		}
	case "disconnecting":
		if st.After != "" {
			extra = append(extra, "then "+st.After)
		}
	case "error":
		if st.BlockFailed {
			extra = append(extra, "blocking failed")
		}
	}
	if st.Cause != "" {
		extra = append(extra, st.Cause)
	}
	if len(extra) == 0 {
		return st.State
	}
	return st.State + " (" + strings.Join(extra, ", ") + ")"
}

// ctlCommand posts a command and prints the state it led to.
func ctlCommand(ctx context.Context, name string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := ctlFlags(name, args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	defer c.close()
	st, _, err := c.call(ctx, http.MethodPost, "/v1/"+name)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", describeStatus(st))
	return nil
}

// cmdConnect is `warren connect`: ask the running warren to connect.
func cmdConnect(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return ctlCommand(ctx, "connect", args, getenv, stdout, stderr)
}

// cmdDisconnect is `warren disconnect`: ask the running warren to
// disconnect (it keeps running, refusing every flow).
func cmdDisconnect(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return ctlCommand(ctx, "disconnect", args, getenv, stdout, stderr)
}

// cmdReconnect is `warren reconnect`: ask the running warren to tear the
// tunnel down and connect again.
func cmdReconnect(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return ctlCommand(ctx, "reconnect", args, getenv, stdout, stderr)
}

// cmdReload is `warren reload`: ask the running warren to read its config
// again. A config with errors is rejected, with every problem, and the
// tunnel is left as it was.
func cmdReload(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return ctlCommand(ctx, "reload", args, getenv, stdout, stderr)
}

// cmdHealthcheck is `warren healthcheck`, for Docker's HEALTHCHECK: it
// succeeds, silently, only if the running warren is ready (connected, with
// a fresh handshake), and otherwise fails with the reason.
func cmdHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := ctlFlags("healthcheck", args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/readyz", nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusServiceUnavailable:
		return errors.New(strings.TrimSpace(string(body)))
	case http.StatusUnauthorized:
		return fmt.Errorf("the API at %s refused the token: check --api-token-file", c.api)
	}
	return fmt.Errorf("unexpected answer from the API at %s: %s", c.api, resp.Status)
}
