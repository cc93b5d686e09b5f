package main

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// How long etcd may take to open its data and become ready (a large WAL replays at start).
const etcdReady = 5 * time.Minute

// startEtcd runs etcd in this process on 127.0.0.1 only (plain HTTP: nothing else can reach
// loopback, and the API server is its only client). Its data is kept in the data directory.
func startEtcd(ctx context.Context, c *config) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kiln"
	cfg.Dir = c.etcdDir()
	client, _ := url.Parse(c.etcdURL())
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", c.etcdPeerPort))
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.UnsafeNoFsync = c.unsafeNoFsync
	// The API server compacts every 5 minutes; etcd keeps an hour of history besides.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd in %s: %w", cfg.Dir, err)
	case <-time.After(etcdReady):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("etcd in %s: not ready after %s", cfg.Dir, etcdReady)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}
