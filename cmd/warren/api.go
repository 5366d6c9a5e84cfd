package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/warren-vpn/warren/control"
)

// apiServeFlags are the flags of the API that up and demo serve.
type apiServeFlags struct {
	addrs     []string // --api, repeatable; nil: the default socket
	tokenFile string
}

func (f *apiServeFlags) register(fs *flag.FlagSet) {
	fs.Func("api", "where the control API listens: unix:PATH, or tcp:HOST:PORT (which needs --api-token-file or "+envAPIToken+"); repeat for both, or off (default unix:"+
		control.DefaultSocketPath(os.Getenv, os.Getuid())+")", func(v string) error {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				f.addrs = append(f.addrs, a)
			}
		}
		return nil
	})
	fs.StringVar(&f.tokenFile, "api-token-file", "", "file holding the bearer token that clients of a tcp: API must send (or the token itself in "+envAPIToken+")")
}

// apiSpec is one listener of the API.
type apiSpec struct {
	network, addr string
	// soft: it is the default socket; if it cannot be had (another warren
	// answers there), warn and go on without it.
	soft bool
}

// apply puts the API's listeners and token into o.
func (f *apiServeFlags) apply(o *appOptions, getenv func(string) string) error {
	addrs := f.addrs
	soft := false
	if addrs == nil {
		addrs = []string{"unix:" + control.DefaultSocketPath(getenv, os.Getuid())}
		soft = true
	}
	needToken := false
	for _, a := range addrs {
		if a == off {
			if len(addrs) > 1 {
				return errors.New("--api: off cannot be given with other addresses")
			}
			return nil
		}
		network, addr, err := control.ParseAPIAddr(a)
		if err != nil {
			return fmt.Errorf("--api: %w", err)
		}
		needToken = needToken || network == "tcp"
		o.api = append(o.api, apiSpec{network: network, addr: addr, soft: soft})
	}
	token, err := apiToken(f.tokenFile, getenv)
	if err != nil {
		return err
	}
	if needToken && token == "" {
		return fmt.Errorf("--api tcp:… needs a token: put one in a file and give --api-token-file FILE, or set %s (clients send it as a bearer token)", envAPIToken)
	}
	o.apiToken = token
	return nil
}
