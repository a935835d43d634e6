package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/keygate/keygate/controlplane/internal/api"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/controlplane/internal/ui"
	"github.com/keygate/keygate/keycache"
)

// Settings that hold the SHA-256 (hex) of generated credentials.
const (
	settingAdmin  = "admin_credential_sha256"
	settingFilter = "filter_credential_sha256"
)

// minCredentialLen is the shortest credential accepted from the environment.
const minCredentialLen = 16

type serveConfig struct {
	listen    string
	store     string
	prefix    string
	logLevel  string
	retention time.Duration
	// shareWindow: a node is active for rate-limit shares this long after
	// its latest usage batch.
	shareWindow time.Duration
}

// runServe runs the service until ctx ends. onListen, if set, is told the
// listening address (tests listen on port 0).
func runServe(ctx context.Context, args []string, stderr io.Writer, env Env, onListen func(net.Addr)) error {
	cfg := serveConfig{
		listen: envOr(env, "KEYGATE_LISTEN", "127.0.0.1:8081"),
		store:  envOr(env, "KEYGATE_STORE", "sqlite:./data/keygate.db"),
		prefix: envOr(env, "KEYGATE_KEY_PREFIX", keycache.DefaultPrefix),
	}
	cfg.shareWindow = store.DefaultShareWindow
	if v := env("KEYGATE_SHARE_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return usagef("KEYGATE_SHARE_WINDOW: %v", err)
		}
		cfg.shareWindow = d
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", cfg.listen, "listen address (KEYGATE_LISTEN)")
	fs.Var(urlFlag{&cfg.store}, "store", "`store`: sqlite:<path> or a postgres:// URL (KEYGATE_STORE)")
	fs.StringVar(&cfg.prefix, "key-prefix", cfg.prefix, "prefix of new keys, 1-16 of [a-z0-9] (KEYGATE_KEY_PREFIX)")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&cfg.retention, "retention", 7*24*time.Hour,
		"how long the change log and usage batch identities are kept")
	fs.DurationVar(&cfg.shareWindow, "share-window", cfg.shareWindow,
		"how long an Envoy counts as active for fleet-wide rate-limit shares after its latest usage flush; keep it several flush periods (KEYGATE_SHARE_WINDOW)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: controlplane serve [flags]\n\nCredentials come from KEYGATE_ADMIN_TOKEN and KEYGATE_FILTER_TOKEN;\nwhen unset, one is generated on first start and printed once. To rotate\none, set the new value and the old one as KEYGATE_ADMIN_TOKEN_PREVIOUS\n(or KEYGATE_FILTER_TOKEN_PREVIOUS), which is accepted too until unset.\n\nflags:")
		fs.PrintDefaults()
	}
	if pos, err := parseInterspersed(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("serve takes no arguments")
	}
	if !keycache.ValidPrefix(cfg.prefix) {
		return usagef("--key-prefix: %v", keycache.ErrBadPrefix)
	}
	if cfg.retention < time.Hour {
		return usagef("--retention must be at least 1h")
	}
	if cfg.shareWindow < time.Second || cfg.shareWindow > time.Hour {
		return usagef("--share-window must be from 1s to 1h")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return usagef("--log-level: %v", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	st, err := openStore(ctx, cfg.store, store.WithShareWindow(cfg.shareWindow))
	if err != nil {
		return err
	}
	defer st.Close()

	admin, err := credential(ctx, st, "admin", settingAdmin, env("KEYGATE_ADMIN_TOKEN"), stderr)
	if err != nil {
		return err
	}
	filter, err := credential(ctx, st, "filter", settingFilter, env("KEYGATE_FILTER_TOKEN"), stderr)
	if err != nil {
		return err
	}
	prevAdmin, err := previousCredential("admin", env("KEYGATE_ADMIN_TOKEN_PREVIOUS"))
	if err != nil {
		return err
	}
	prevFilter, err := previousCredential("filter", env("KEYGATE_FILTER_TOKEN_PREVIOUS"))
	if err != nil {
		return err
	}
	srv, err := api.New(api.Config{Store: st, AdminCredential: admin, FilterCredential: filter,
		PreviousAdminCredential: prevAdmin, PreviousFilterCredential: prevFilter,
		KeyPrefix: cfg.prefix, Logger: log})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{
		Handler:           ui.Mount(srv), // the dashboard under /ui/, the API elsewhere
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      90 * time.Second, // long-polls last up to 60 s
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if ui.MissingChartLibrary() {
		log.Warn("built without the dashboard's chart library: run controlplane/internal/ui/setup.sh and rebuild")
	}
	log.Info("listening", slog.String("addr", ln.Addr().String()), slog.String("store", storeKind(cfg.store)))
	if onListen != nil {
		onListen(ln.Addr())
	}

	jctx, stopJanitor := context.WithCancel(ctx)
	defer stopJanitor()
	go janitor(jctx, st, log, cfg.retention)

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	srv.BeginShutdown()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

func envOr(env Env, name, def string) string {
	if v := env(name); v != "" {
		return v
	}
	return def
}

// openStore opens "sqlite:<path>" or a postgres:// (postgresql://) URL.
func openStore(ctx context.Context, spec string, opts ...store.Option) (store.Store, error) {
	switch {
	case strings.HasPrefix(spec, "sqlite:"):
		path := strings.TrimPrefix(spec, "sqlite:")
		if path == "" {
			return nil, usagef("store: sqlite: needs a file path")
		}
		return store.OpenSQLite(ctx, path, opts...)
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		return store.OpenPostgres(ctx, spec, opts...)
	}
	return nil, usagef("store must be sqlite:<path> or a postgres:// URL")
}

// storeKind names the store for logs without its URL (which may hold a
// password).
func storeKind(spec string) string {
	if strings.HasPrefix(spec, "sqlite:") {
		return spec
	}
	return "postgres"
}

// credential returns the SHA-256 of a bearer credential: the one from the
// environment if set, else the hash stored by an earlier start, else a new
// credential that is generated, stored as its hash and printed once to
// stderr. Replicas starting together agree through SetSettingIfAbsent.
func credential(ctx context.Context, st store.Store, what, setting, fromEnv string, stderr io.Writer) ([32]byte, error) {
	if fromEnv != "" {
		if len(fromEnv) < minCredentialLen {
			return [32]byte{}, fmt.Errorf("the %s credential must be at least %d characters", what, minCredentialLen)
		}
		return api.HashCredential(fromEnv), nil
	}
	for range 2 {
		v, err := st.GetSetting(ctx, setting)
		if err == nil {
			var h [32]byte
			if b, err := hex.DecodeString(v); err != nil || len(b) != len(h) {
				return h, fmt.Errorf("setting %s is not a SHA-256 in hex", setting)
			} else {
				copy(h[:], b)
			}
			return h, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return [32]byte{}, fmt.Errorf("read %s credential: %w", what, err)
		}
		token, err := keycache.NewKey("kg"+what, rand.Reader)
		if err != nil {
			return [32]byte{}, err
		}
		h := api.HashCredential(token)
		set, err := st.SetSettingIfAbsent(ctx, setting, hex.EncodeToString(h[:]))
		if err != nil {
			return [32]byte{}, fmt.Errorf("store %s credential: %w", what, err)
		}
		if set {
			fmt.Fprintf(stderr, "Generated the %s credential. It is shown only now and stored only as a hash;\n"+
				"set it as KEYGATE_%s_TOKEN where it is needed:\n\n    %s\n\n", what, strings.ToUpper(what), token)
			return h, nil
		}
		// Another replica stored one first: use it.
	}
	return [32]byte{}, fmt.Errorf("could not settle the %s credential", what)
}

// previousCredential hashes the credential being rotated out (fromEnv),
// accepted with the current one until it is unset; "" gives none.
func previousCredential(what, fromEnv string) ([32]byte, error) {
	if fromEnv == "" {
		return [32]byte{}, nil
	}
	if len(fromEnv) < minCredentialLen {
		return [32]byte{}, fmt.Errorf("the previous %s credential must be at least %d characters", what, minCredentialLen)
	}
	return api.HashCredential(fromEnv), nil
}

// janitor prunes the change log and usage batch identities older than
// retention, hourly.
func janitor(ctx context.Context, st store.Store, log *slog.Logger, retention time.Duration) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		before := time.Now().Add(-retention)
		if n, err := st.PruneChanges(ctx, before); err != nil && ctx.Err() == nil {
			log.Warn("prune change log", slog.String("error", err.Error()))
		} else if n > 0 {
			log.Info("pruned change log", slog.Int64("removed", n))
		}
		if n, err := st.PruneUsageBatches(ctx, before); err != nil && ctx.Err() == nil {
			log.Warn("prune usage batches", slog.String("error", err.Error()))
		} else if n > 0 {
			log.Info("pruned usage batch identities", slog.Int64("removed", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
