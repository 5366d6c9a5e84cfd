package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/warren-vpn/warren/config"
	"github.com/warren-vpn/warren/dnsserver"
	"github.com/warren-vpn/warren/netstack"
	"github.com/warren-vpn/warren/proxy"
	"github.com/warren-vpn/warren/state"
)

// appOptions is what an app is made of.
type appOptions struct {
	configs []*config.Config // to try in turn
	socks5  string           // listen address of the SOCKS5 proxy
	probes  []netip.Addr     // extra verification targets
	hold    time.Duration    // how long a new flow may wait while connecting
	log     *slog.Logger
}

// app is warren in proxy mode, wired together: the state machine drives the
// netstack tunnel and opens and closes the gate; the SOCKS5 proxy dials
// through the gate and resolves names through the tunnel's DNS.
type app struct {
	machine *state.Machine
	tunnel  *netstack.Tunnel
	gate    *proxy.Gate
	socks5  *proxy.SOCKS5
	// socks5Addr is the address the SOCKS5 proxy listens on.
	socks5Addr net.Addr
	served     chan error // Serve's result
	log        *slog.Logger
}

// startApp opens the listeners and starts the machine, Disconnected. On
// error, nothing is left running.
func startApp(o appOptions) (a *app, err error) {
	l, err := net.Listen("tcp", o.socks5)
	if err != nil {
		return nil, fmt.Errorf("SOCKS5 proxy: %w", err)
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	a = &app{log: o.log, served: make(chan error, 1), socks5Addr: l.Addr()}
	a.tunnel = netstack.NewTunnel(netstack.TunnelOptions{Logger: o.log, ProbeTargets: o.probes})
	a.gate = proxy.NewGate(a.tunnel)
	a.gate.Hold = o.hold
	resolver := dnsserver.NewResolver(a.gate, a.tunnel.DNS)
	a.socks5 = &proxy.SOCKS5{Gate: a.gate, Resolver: resolver, Logger: o.log}
	a.machine, err = state.New(state.Options{
		Tunnel:  a.tunnel,
		Policy:  a.gate,
		Configs: o.configs,
		Logger:  o.log.With("component", "tunnel"),
	})
	if err != nil {
		a.tunnel.Close()
		return nil, err
	}
	go func() { a.served <- a.socks5.Serve(l) }()
	o.log.Info("SOCKS5 proxy listening", "addr", l.Addr().String())
	for _, c := range o.configs {
		if len(c.Interface.DNS) == 0 {
			o.log.Warn("the config has no DNS server: while it is in use, names cannot be resolved through the tunnel, and warren never asks the host's resolver; connect by IP address", "config", c.Path)
		}
	}
	return a, nil
}

// shutdown stops the app in order: the listeners and front-ends (closing
// their flows), then the tunnel and its stack.
func (a *app) shutdown(ctx context.Context) error {
	var errs []error
	if err := a.socks5.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop SOCKS5 proxy: %w", err))
	}
	if err := <-a.served; !errors.Is(err, proxy.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("SOCKS5 proxy: %w", err))
	}
	if err := a.machine.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("disconnect: %w", err))
	}
	a.tunnel.Close()
	return errors.Join(errs...)
}
