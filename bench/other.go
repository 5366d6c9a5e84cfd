//go:build !linux

package main

import (
	"context"
	"time"
)

// run needs Linux: network namespaces, TUN devices, nftables and /proc.
func run(context.Context, config, func(string, ...any)) (*results, error) {
	return nil, &unavailableError{"it needs Linux (network namespaces, TUN devices, nftables)"}
}

// selfCPU is not measured off Linux.
func selfCPU() (user, sys time.Duration) { return 0, 0 }
