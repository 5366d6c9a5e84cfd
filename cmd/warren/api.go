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
	fs.Func("api", "where the control API listens: unix:PATH, or tcp:HOST:PORT (which needs --api-token-file); repeat for both, or off (default unix:"+
		control.DefaultSocketPath(os.Getenv, os.Getuid())+")", func(v string) error {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				f.addrs = append(f.addrs, a)
			}
		}
		return nil
	})
	fs.StringVar(&f.tokenFile, "api-token-file", "", "file holding the bearer token that clients of a tcp: API must send")
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
	switch {
	case needToken && f.tokenFile == "":
		return errors.New("--api tcp:… needs a token: put one in a file and give --api-token-file FILE (clients send it as a bearer token)")
	case f.tokenFile != "":
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return fmt.Errorf("--api-token-file: %v", err)
		}
		o.apiToken = strings.TrimSpace(string(b))
		if o.apiToken == "" {
			return fmt.Errorf("--api-token-file: %s is empty", f.tokenFile)
		}
		if strings.ContainsAny(o.apiToken, " \t\r\n") {
			return fmt.Errorf("--api-token-file: %s holds more than one word; the token is its only line", f.tokenFile)
		}
	}
	return nil
}
