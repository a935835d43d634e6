package api

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Throttling of failed authentication. Credentials are random 128-bit (or
// stronger) tokens, so guessing is hopeless anyway; the limit keeps a
// client from trying thousands a second and from filling the logs.
const (
	// authFailWindow is the fixed window failures are counted in.
	authFailWindow = time.Minute
	// defaultAuthFailures is how many invalid credentials one client may
	// present per window before every authenticated request it makes is
	// answered 429 until the window ends.
	defaultAuthFailures = 30
	// maxAuthClients bounds the tracking table; clients beyond it share
	// one more entry (overflowClient).
	maxAuthClients = 10_000
	// overflowClient is the shared entry of clients the table has no room
	// for: while many addresses fail at once, new ones share one budget.
	overflowClient = "overflow"

	codeTooManyRequests = "too_many_requests"
)

// authLimiter counts invalid credentials per client address in fixed
// windows of the server's clock.
type authLimiter struct {
	mu         sync.Mutex
	limit      int
	maxClients int
	clients    map[string]*authClient
	swept      time.Time
}

type authClient struct {
	start    time.Time // the window's start
	failures int
	logged   bool // the throttling of this window was logged
}

func newAuthLimiter(limit int) *authLimiter {
	return &authLimiter{limit: limit, maxClients: maxAuthClients, clients: map[string]*authClient{}}
}

// clientKey is the address failures are counted by: the peer's IP (the
// control plane is reached directly or through a proxy that is trusted
// to be the only peer), an IPv6 one by its /64, which one host usually
// holds entirely.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return clip(host, 64)
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// blocked tells how long the client must wait, if it has used up its
// failures in the current window.
func (l *authLimiter) blocked(client string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	if c == nil {
		if len(l.clients) < l.maxClients {
			return 0, false
		}
		c = l.clients[overflowClient]
		if c == nil {
			return 0, false
		}
	}
	end := c.start.Add(authFailWindow)
	if c.failures < l.limit || !now.Before(end) {
		return 0, false
	}
	return end.Sub(now), true
}

// fail records an invalid credential from client. It returns the entry
// the failure was counted under and whether the client has just used up
// its window (the moment to log, once).
func (l *authLimiter) fail(client string, now time.Time) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	if c == nil && len(l.clients) >= l.maxClients {
		l.sweep(now)
	}
	if c == nil && len(l.clients) >= l.maxClients {
		client = overflowClient
		c = l.clients[client]
	}
	if c == nil {
		c = &authClient{start: now}
		l.clients[client] = c
	}
	if !now.Before(c.start.Add(authFailWindow)) {
		*c = authClient{start: now}
	}
	c.failures++
	if c.failures >= l.limit && !c.logged {
		c.logged = true
		return client, true
	}
	return client, false
}

// sweep drops the entries of ended windows, at most once per window so a
// full table costs one pass per window, not one per failure.
func (l *authLimiter) sweep(now time.Time) {
	if now.Sub(l.swept) < authFailWindow {
		return
	}
	l.swept = now
	for k, c := range l.clients {
		if !now.Before(c.start.Add(authFailWindow)) {
			delete(l.clients, k)
		}
	}
}

// throttled is the answer to a client that has used up its failures.
func throttled(wait time.Duration) *problem {
	secs := int((wait + time.Second - 1) / time.Second)
	p := newProblem(http.StatusTooManyRequests, codeTooManyRequests,
		"too many invalid credentials from this address; retry after "+strconv.Itoa(secs)+" s")
	p.header = http.Header{"Retry-After": {strconv.Itoa(secs)}}
	return p
}

// authFailed counts an invalid credential and logs, once per client and
// window, that the client is now throttled.
func (s *Server) authFailed(r *http.Request) {
	now := s.now()
	client, first := s.authLimit.fail(clientKey(r), now)
	if first {
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "authentication failures throttled",
			slog.String("client", client), slog.Int("failures", s.authLimit.limit),
			slog.Duration("window", authFailWindow))
	}
}
