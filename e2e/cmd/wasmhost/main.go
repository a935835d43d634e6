// Command wasmhost runs keygate's envoy.yaml on the Envoy-faithful wazero
// host: the same listeners, filters, bootstrap service and clusters, for
// machines without Envoy.
//
//	wasmhost -c envoy.yaml --concurrency 2 --admin-port 9901 \
//	  [--service-node id] [--service-cluster name] \
//	  [--listen 127.0.0.1:10000] [--cluster name=host:port[,host:port]]... [--wasm path]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keygate/keygate/e2e/internal/host"
)

// clusterFlags replaces clusters' endpoints: name=host:port[,host:port...],
// repeatable (repeating a name adds endpoints).
type clusterFlags map[string][]string

func (c clusterFlags) String() string { return fmt.Sprint(map[string][]string(c)) }

func (c clusterFlags) Set(v string) error {
	name, list, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return errors.New("want name=host:port[,host:port...]")
	}
	for _, addr := range strings.Split(list, ",") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("cluster %s: %w", name, err)
		}
		c[name] = append(c[name], addr)
	}
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wasmhost:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	opts, err := parseArgs(args)
	if err != nil {
		return err
	}
	// Catch the signals before serving: a SIGTERM that arrives as soon as
	// the listener answers must stop the host, not kill the process.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := host.New(opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wasmhost: listening on %s, admin on %s, %d workers\n", h.Addr(0), h.AdminAddr(), opts.Concurrency)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "wasmhost: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.Close(sctx)
}

// parseArgs reads the flags and the config into the host's options.
func parseArgs(args []string) (host.Options, error) {
	fs := flag.NewFlagSet("wasmhost", flag.ContinueOnError)
	config := fs.String("c", "envoy.yaml", "Envoy bootstrap (YAML or JSON)")
	concurrency := fs.Int("concurrency", 2, "worker VMs (Envoy's --concurrency)")
	adminPort := fs.Int("admin-port", -1, "admin port on 127.0.0.1 (-1: from the config)")
	listen := fs.String("listen", "", "override the first listener's address (host:port)")
	wasm := fs.String("wasm", "", "override every plugin's .wasm path")
	logLevel := fs.String("log-level", "info", "trace, debug, info, warn, error or critical")
	serviceNode := fs.String("service-node", "", "node.id, overriding the config's (Envoy's --service-node)")
	serviceCluster := fs.String("service-cluster", "", "node.cluster, overriding the config's (Envoy's --service-cluster)")
	clusters := clusterFlags{}
	fs.Var(clusters, "cluster", "replace a cluster's endpoints: name=host:port[,host:port...] (repeatable)")
	if err := fs.Parse(args); err != nil {
		return host.Options{}, err
	}
	if fs.NArg() > 0 {
		return host.Options{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg, err := host.LoadConfig(*config)
	if err != nil {
		return host.Options{}, err
	}
	opts := host.Options{
		Config:      cfg,
		Concurrency: *concurrency,
		Listen:      *listen,
		Clusters:    clusters,
		NodeID:      *serviceNode,
		NodeCluster: *serviceCluster,
		WasmPath:    *wasm,
		LogLevel:    *logLevel,
	}
	if *adminPort >= 0 {
		opts.AdminAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(*adminPort))
	}
	return opts, nil
}
