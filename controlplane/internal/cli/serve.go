package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/api"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/controlplane/internal/ui"
)

// Settings that hold the SHA-256 (hex) of generated credentials.
const (
	settingAdmin  = "admin_credential_sha256"
	settingFilter = "filter_credential_sha256"
)

// minCredentialBits is the least estimated entropy of a credential taken
// from the environment (see credentialBits).
const minCredentialBits = 128

type serveConfig struct {
	listen    string
	store     string
	prefix    string
	keyLength int // random Base62 characters of new keys
	logLevel  string
	retention time.Duration
	// usageRetention: usage minutes older than this are deleted, and
	// usage batches with older counts refused.
	usageRetention time.Duration
	// synchronous is SQLite's synchronous mode (store.SynchronousFull or
	// store.SynchronousNormal).
	synchronous string
	// shareWindow: a node is active for rate-limit shares this long after
	// its latest usage batch.
	shareWindow time.Duration
	// pollInterval: how often long-polls read the change-log version (the
	// fallback behind PostgreSQL's NOTIFY).
	pollInterval time.Duration
	// pgMaxOpen, pgMaxIdle: the PostgreSQL pool of this replica.
	pgMaxOpen, pgMaxIdle int
	// maxRegistrations: instance registrations per minute, fleet-wide.
	maxRegistrations int
	// tls: serve HTTPS (and mutual TLS on the filter endpoints).
	tls tlsFiles
}

// runServe runs the service until ctx ends. onListen, if set, is told the
// listening address (tests listen on port 0).
func runServe(ctx context.Context, args []string, stderr io.Writer, env Env, onListen func(net.Addr)) error {
	cfg := serveConfig{
		listen: envOr(env, "KEYGATE_LISTEN", "127.0.0.1:8081"),
		store:  envOr(env, "KEYGATE_STORE", "sqlite:./data/keygate.db"),
		prefix: envOr(env, "KEYGATE_KEY_PREFIX", apikey.DefaultPrefix),
	}
	var err error
	if cfg.shareWindow, err = envDuration(env, "KEYGATE_SHARE_WINDOW", store.DefaultShareWindow); err != nil {
		return err
	}
	if cfg.pollInterval, err = envDuration(env, "KEYGATE_POLL_INTERVAL", store.DefaultPollInterval); err != nil {
		return err
	}
	if cfg.pgMaxOpen, err = envInt(env, "KEYGATE_PG_MAX_OPEN", store.DefaultMaxOpenConns); err != nil {
		return err
	}
	if cfg.pgMaxIdle, err = envInt(env, "KEYGATE_PG_MAX_IDLE", 0); err != nil {
		return err
	}
	if cfg.maxRegistrations, err = envInt(env, "KEYGATE_MAX_REGISTRATIONS", api.DefaultMaxRegistrationsPerMinute); err != nil {
		return err
	}
	if cfg.keyLength, err = envInt(env, "KEYGATE_KEY_LENGTH", apikey.DefaultBodyLen); err != nil {
		return err
	}
	cfg.usageRetention = store.DefaultUsageRetention
	if v := env("KEYGATE_USAGE_RETENTION"); v != "" {
		d, err := parseDays(v)
		if err != nil {
			return usagef("KEYGATE_USAGE_RETENTION: %v", err)
		}
		cfg.usageRetention = d
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", cfg.listen, "listen address (KEYGATE_LISTEN)")
	fs.Var(urlFlag{&cfg.store}, "store", "`store`: sqlite:<path> or a postgres:// URL (KEYGATE_STORE)")
	fs.StringVar(&cfg.prefix, "key-prefix", cfg.prefix, "prefix of new keys, 1-16 of [a-z0-9] (KEYGATE_KEY_PREFIX)")
	fs.IntVar(&cfg.keyLength, "key-length", cfg.keyLength, fmt.Sprintf(
		"random Base62 characters of new keys, %d-%d: 16 to 64 bytes of entropy; filters accept every length (KEYGATE_KEY_LENGTH)",
		apikey.MinBodyLen, apikey.MaxBodyLen))
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&cfg.retention, "retention", 7*24*time.Hour,
		"how long the change log and usage batch identities are kept")
	cfg.synchronous = envOr(env, "KEYGATE_SQLITE_SYNCHRONOUS", store.SynchronousFull)
	fs.StringVar(&cfg.synchronous, "sqlite-synchronous", cfg.synchronous,
		"SQLite only: full syncs every commit so acknowledged changes (revocations) survive power loss; normal commits faster but may lose the last ones (KEYGATE_SQLITE_SYNCHRONOUS)")
	fs.Func("usage-retention", "how long usage is kept, e.g. 90d or 2160h; older usage is deleted and batches with older counts are refused (KEYGATE_USAGE_RETENTION, default 90d)",
		func(v string) (err error) { cfg.usageRetention, err = parseDays(v); return err })
	fs.DurationVar(&cfg.shareWindow, "share-window", cfg.shareWindow,
		"how long an Envoy counts as active for fleet-wide rate-limit shares after its latest usage flush; keep it several flush periods (KEYGATE_SHARE_WINDOW)")
	fs.DurationVar(&cfg.pollInterval, "poll-interval", cfg.pollInterval,
		"how often long-polls read the store for changes made by other replicas; on PostgreSQL NOTIFY wakes them at once and this is the fallback (KEYGATE_POLL_INTERVAL)")
	fs.IntVar(&cfg.pgMaxOpen, "pg-max-open", cfg.pgMaxOpen,
		"most open PostgreSQL connections of this replica, plus one listening connection (KEYGATE_PG_MAX_OPEN)")
	fs.IntVar(&cfg.pgMaxIdle, "pg-max-idle", cfg.pgMaxIdle,
		"most idle PostgreSQL connections kept open by this replica; 0 means as many as --pg-max-open (KEYGATE_PG_MAX_IDLE)")
	fs.StringVar(&cfg.tls.cert, "tls-cert", env("KEYGATE_TLS_CERT"),
		"PEM certificate chain `file`: serve HTTPS instead of HTTP; re-read when it changes (KEYGATE_TLS_CERT)")
	fs.StringVar(&cfg.tls.key, "tls-key", env("KEYGATE_TLS_KEY"),
		"PEM private key `file` of --tls-cert (KEYGATE_TLS_KEY)")
	fs.StringVar(&cfg.tls.clientCA, "tls-client-ca", env("KEYGATE_TLS_CLIENT_CA"),
		"PEM CA `file`: the filter endpoints (sync, usage, registration) then require a client certificate it signed, mutual TLS (KEYGATE_TLS_CLIENT_CA)")
	fs.IntVar(&cfg.maxRegistrations, "max-registrations", cfg.maxRegistrations,
		"Envoy instance registrations accepted per minute, fleet-wide; more get 429 and retry (KEYGATE_MAX_REGISTRATIONS)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: controlplane serve [flags]\n\nCredentials come from KEYGATE_ADMIN_TOKEN and KEYGATE_FILTER_TOKEN;\nwhen unset, one is generated on first start and printed once. To rotate\none, set the new value and the old one as KEYGATE_ADMIN_TOKEN_PREVIOUS\n(or KEYGATE_FILTER_TOKEN_PREVIOUS), which is accepted too until unset.\n\nflags:")
		fs.PrintDefaults()
	}
	if pos, err := parseInterspersed(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("serve takes no arguments")
	}
	if !apikey.ValidPrefix(cfg.prefix) {
		return usagef("--key-prefix: %v", apikey.ErrBadPrefix)
	}
	if !apikey.ValidBodyLen(cfg.keyLength) {
		return usagef("--key-length: %v", apikey.ErrBadBodyLen)
	}
	if cfg.retention < time.Hour {
		return usagef("--retention must be at least 1h")
	}
	if cfg.synchronous != store.SynchronousFull && cfg.synchronous != store.SynchronousNormal {
		return usagef("--sqlite-synchronous must be full or normal")
	}
	if cfg.usageRetention < 24*time.Hour {
		return usagef("--usage-retention must be at least 1d")
	}
	if cfg.shareWindow < time.Second || cfg.shareWindow > time.Hour {
		return usagef("--share-window must be from 1s to 1h")
	}
	if cfg.pollInterval < 10*time.Millisecond || cfg.pollInterval > time.Minute {
		return usagef("--poll-interval must be from 10ms to 1m")
	}
	if cfg.pgMaxOpen < 1 || cfg.pgMaxIdle < 0 || cfg.pgMaxIdle > cfg.pgMaxOpen {
		return usagef("--pg-max-open must be at least 1 and --pg-max-idle from 0 (as many as --pg-max-open) to --pg-max-open")
	}
	if cfg.maxRegistrations < 1 {
		return usagef("--max-registrations must be at least 1")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return usagef("--log-level: %v", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	var tlsCfg *tls.Config
	if cfg.tls.enabled() {
		var err error
		if tlsCfg, err = serverTLS(cfg.tls, log); err != nil {
			return err
		}
	}

	st, err := openStore(ctx, cfg.store, store.WithShareWindow(cfg.shareWindow), store.WithSQLiteSynchronous(cfg.synchronous),
		store.WithPollInterval(cfg.pollInterval), store.WithPostgresPool(cfg.pgMaxOpen, cfg.pgMaxIdle), store.WithWarmPool())
	if err != nil {
		return err
	}
	defer st.Close()

	// Check every credential from the environment before using any.
	for _, c := range []struct{ name, role string }{
		{"KEYGATE_ADMIN_TOKEN", "admin"}, {"KEYGATE_FILTER_TOKEN", "filter"},
		{"KEYGATE_ADMIN_TOKEN_PREVIOUS", "admin"}, {"KEYGATE_FILTER_TOKEN_PREVIOUS", "filter"},
	} {
		if err := checkCredential(c.name, c.role, env(c.name)); err != nil {
			return err
		}
	}
	admin, err := credential(ctx, st, "admin", settingAdmin, env("KEYGATE_ADMIN_TOKEN"), stderr)
	if err != nil {
		return err
	}
	filter, err := credential(ctx, st, "filter", settingFilter, env("KEYGATE_FILTER_TOKEN"), stderr)
	if err != nil {
		return err
	}
	prevAdmin := previousCredential(env("KEYGATE_ADMIN_TOKEN_PREVIOUS"))
	prevFilter := previousCredential(env("KEYGATE_FILTER_TOKEN_PREVIOUS"))
	srv, err := api.New(api.Config{Store: st, AdminCredential: admin, FilterCredential: filter,
		PreviousAdminCredential: prevAdmin, PreviousFilterCredential: prevFilter,
		KeyPrefix: cfg.prefix, KeyLength: cfg.keyLength, Logger: log, UsageRetention: cfg.usageRetention,
		MaxRegistrationsPerMinute: cfg.maxRegistrations, FilterClientCert: cfg.tls.clientCA != ""})
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
		TLSConfig:         tlsCfg,
	}
	if ui.MissingChartLibrary() {
		log.Warn("built without the dashboard's chart library: run controlplane/internal/ui/setup.sh and rebuild")
	}
	scheme := "http"
	switch {
	case cfg.tls.clientCA != "":
		scheme = "https+mtls"
	case tlsCfg != nil:
		scheme = "https"
	}
	log.Info("listening", slog.String("addr", ln.Addr().String()), slog.String("store", storeKind(cfg.store)), slog.String("scheme", scheme))
	if onListen != nil {
		onListen(ln.Addr())
	}

	jctx, stopJanitor := context.WithCancel(ctx)
	defer stopJanitor()
	go janitor(jctx, st, log, cfg.retention, cfg.usageRetention)
	go srv.WatchNodes(jctx, 30*time.Second)

	errc := make(chan error, 1)
	go func() {
		if tlsCfg != nil {
			errc <- hs.ServeTLS(ln, "", "") // the certificate comes from TLSConfig
			return
		}
		errc <- hs.Serve(ln)
	}()
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

func envDuration(env Env, name string, def time.Duration) (time.Duration, error) {
	v := env(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, usagef("%s: %v", name, err)
	}
	return d, nil
}

func envInt(env Env, name string, def int) (int, error) {
	v := env(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, usagef("%s: not an integer", name)
	}
	return n, nil
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
	if fromEnv != "" { // checked by checkCredential
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
		token, err := apikey.NewKey("kg"+what, rand.Reader)
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

// previousCredential hashes the credential being rotated out (fromEnv,
// checked by checkCredential), accepted with the current one until it is
// unset; "" gives none.
func previousCredential(fromEnv string) [32]byte {
	if fromEnv == "" {
		return [32]byte{}
	}
	return api.HashCredential(fromEnv)
}

// checkCredential refuses a credential from the environment variable name
// that is weak: it must be one that serve generates for the role (a key
// with prefix "kg"+role) or have an estimated minCredentialBits bits of
// entropy. The error names the variable, never the value.
func checkCredential(name, role, v string) error {
	if v == "" || apikey.CheckKey(v, "kg"+role) == nil {
		return nil
	}
	bits, ok := credentialBits(v)
	if !ok {
		return usagef("%s must be printable ASCII without spaces", name)
	}
	if bits < minCredentialBits {
		return usagef("%s is too weak (about %d bits; at least %d needed): unset it to have a credential generated, "+
			"or set a random one such as the output of openssl rand -hex 16", name, int(bits), minCredentialBits)
	}
	return nil
}

// credentialBits estimates the entropy of v as if its characters were
// drawn at random from the classes it uses (lower case 26, upper case 26,
// digits 10, other printable ASCII 33; hexadecimal digits alone 16): an
// upper bound for a chosen password, exact for a random token. ok is false for characters outside
// printable ASCII or a space.
func credentialBits(v string) (bits float64, ok bool) {
	var lower, upper, digit, other bool
	hex := true // only [0-9a-f] or only [0-9A-F]: 16 symbols
	for i := 0; i < len(v); i++ {
		c := v[i]
		hex = hex && (c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F')
		switch {
		case c >= 'a' && c <= 'z':
			lower = true
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= '0' && c <= '9':
			digit = true
		case c > ' ' && c < 0x7f:
			other = true
		default:
			return 0, false
		}
	}
	if hex && !(lower && upper) {
		return float64(len(v)) * 4, true
	}
	pool := 0
	for _, c := range []struct {
		used bool
		n    int
	}{{lower, 26}, {upper, 26}, {digit, 10}, {other, 33}} {
		if c.used {
			pool += c.n
		}
	}
	return float64(len(v)) * math.Log2(float64(pool)), true
}

// janitor prunes the change log and usage batch identities older than
// retention, usage older than usageRetention and instances not seen for
// store.InstanceRetention, at start and hourly. Every replica runs one:
// pruning is idempotent.
func janitor(ctx context.Context, st store.Store, log *slog.Logger, retention, usageRetention time.Duration) {
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
		if n, err := st.PruneUsage(ctx, time.Now().Add(-usageRetention)); err != nil && ctx.Err() == nil {
			log.Warn("prune usage", slog.String("error", err.Error()))
		} else if n > 0 {
			log.Info("pruned usage past its retention", slog.Int64("removed", n))
		}
		if n, err := st.PruneInstances(ctx, time.Now().Add(-store.InstanceRetention)); err != nil && ctx.Err() == nil {
			log.Warn("prune instances", slog.String("error", err.Error()))
		} else if n > 0 {
			log.Info("pruned instances not seen for a week", slog.Int64("removed", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// parseDays parses a Go duration or a whole number of days ("90d").
func parseDays(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*365 {
			return 0, fmt.Errorf("invalid number of days %q", v)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(v)
}
