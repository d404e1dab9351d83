package tokenstore

// The store contract of SCS (github.com/alexedwards/scs/v2), tested the way
// SCS's own store tests do, against the database that the standard libpq
// variables name (PGHOST, PGPORT, PGDATABASE, PGUSER, ...), where the
// tokenstore extension (1.2 or later) is created. Every test uses fresh
// random tokens and leaves other sessions in that database alone.

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq"
)

// The interfaces of SCS's store.go, restated: SCS is not a dependency.
type scsStore interface {
	Delete(token string) (err error)
	Find(token string) (b []byte, found bool, err error)
	Commit(token string, b []byte, expiry time.Time) (err error)
}

type scsIterableStore interface {
	All() (map[string][]byte, error)
}

type scsCtxStore interface {
	scsStore
	DeleteCtx(ctx context.Context, token string) (err error)
	FindCtx(ctx context.Context, token string) (b []byte, found bool, err error)
	CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) (err error)
}

type scsIterableCtxStore interface {
	AllCtx(ctx context.Context) (map[string][]byte, error)
}

var (
	_ scsStore            = (*Store)(nil)
	_ scsIterableStore    = (*Store)(nil)
	_ scsCtxStore         = (*Store)(nil)
	_ scsIterableCtxStore = (*Store)(nil)
)

var testDB *sql.DB

func TestMain(m *testing.M) {
	// lib/pq reads the PG* variables itself; it has no sslmode "prefer",
	// so a socket folder (or no PGSSLMODE at all on a local server) needs
	// sslmode=disable.
	dsn := ""
	if os.Getenv("PGSSLMODE") == "" {
		host := os.Getenv("PGHOST")
		if host == "" || strings.HasPrefix(host, "/") || host == "localhost" || host == "127.0.0.1" {
			dsn = "sslmode=disable"
		}
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	db.SetMaxOpenConns(8)
	var version string
	if err := db.QueryRow("SELECT extversion FROM pg_extension WHERE extname = 'tokenstore'").Scan(&version); err != nil {
		fmt.Fprintln(os.Stderr, "the tokenstore extension in the test database:", err)
		os.Exit(1)
	}
	fmt.Printf("tokenstore extension %s in database %q\n", version, os.Getenv("PGDATABASE"))
	testDB = db
	code := m.Run()
	db.Close()
	os.Exit(code)
}

// newToken makes a token as SCS does (32 random bytes, base64url), and ends
// its session when the test is over, so that no test leaves one live.
func newToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	t.Cleanup(func() {
		if _, err := testDB.Exec("SELECT tokenstore.token_delete($1)", token); err != nil {
			t.Errorf("cleanup: token_delete: %v", err)
		}
	})
	return token
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// binaryPayload: every byte value, NUL bytes first and last, then noise.
func binaryPayload(t *testing.T) []byte {
	b := []byte{0, 0, 'a', 0}
	for i := 0; i < 256; i++ {
		b = append(b, byte(i))
	}
	b = append(b, []byte("\\x00'\"\\\\")...)
	b = append(b, randomBytes(t, 200)...)
	return append(b, 0)
}

func mustCommit(t *testing.T, s *Store, token string, b []byte, expiry time.Time) {
	t.Helper()
	if err := s.Commit(token, b, expiry); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func mustFind(t *testing.T, s *Store, token string, want []byte) {
	t.Helper()
	b, found, err := s.Find(token)
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	if !found {
		t.Fatalf("Find: not found, want %d bytes", len(want))
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("Find: got %d bytes %q, want %d bytes %q", len(b), b, len(want), want)
	}
}

func mustNotFind(t *testing.T, s *Store, token string) {
	t.Helper()
	b, found, err := s.Find(token)
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	if found || b != nil {
		t.Fatalf("Find: got found=%v %q, want not found", found, b)
	}
}

// deadline: the session's deadline as token_check sees it; ok false when it
// is not live.
func deadline(t *testing.T, token string) (time.Time, bool) {
	t.Helper()
	var at time.Time
	err := testDB.QueryRow("SELECT expires_at FROM tokenstore.token_check($1)", token).Scan(&at)
	if err == sql.ErrNoRows {
		return time.Time{}, false
	}
	if err != nil {
		t.Fatalf("token_check: %v", err)
	}
	return at, true
}

func sameInstant(a, b time.Time) bool {
	d := a.Sub(b)
	return d <= time.Microsecond && d >= -time.Microsecond
}

func TestFind(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	mustCommit(t, s, token, []byte("encoded_data"), time.Now().Add(time.Minute))
	mustFind(t, s, token, []byte("encoded_data"))
}

func TestFindBinary(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	data := binaryPayload(t)
	mustCommit(t, s, token, data, time.Now().Add(time.Minute))
	mustFind(t, s, token, data)
	// What the table holds, read back through the extension, is the same.
	var raw []byte
	if err := testDB.QueryRow("SELECT tokenstore.token_data($1)", token).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, data) {
		t.Fatalf("token_data: got %q, want %q", raw, data)
	}
}

func TestFindMissing(t *testing.T) {
	s := New(testDB)
	mustNotFind(t, s, newToken(t))
	mustNotFind(t, s, "missing_session_token")
}

func TestFindMalformed(t *testing.T) {
	s := New(testDB)
	for _, token := range []string{"", "short", "nul\x00in the middle of a token", "not utf-8 \xff\xfe in this token"} {
		b, found, err := s.Find(token)
		if err != nil || found || b != nil {
			t.Errorf("Find(%q): got %q, %v, %v; want not found, no error", token, b, found, err)
		}
		if err := s.Delete(token); err != nil {
			t.Errorf("Delete(%q): %v", token, err)
		}
	}
}

func TestCommitNew(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	expiry := time.Now().Add(time.Hour)
	mustCommit(t, s, token, []byte("encoded_data"), expiry)
	mustFind(t, s, token, []byte("encoded_data"))
	at, ok := deadline(t, token)
	if !ok {
		t.Fatal("token_check: no row for a live session")
	}
	if !sameInstant(at, expiry) {
		t.Fatalf("token_check expires_at %v, want %v", at, expiry)
	}
}

func TestCommitUpdated(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	mustCommit(t, s, token, []byte("encoded_data"), time.Now().Add(time.Minute))
	later := time.Now().Add(2 * time.Hour)
	mustCommit(t, s, token, []byte("new_encoded_data"), later)
	mustFind(t, s, token, []byte("new_encoded_data"))
	at, ok := deadline(t, token)
	if !ok || !sameInstant(at, later) {
		t.Fatalf("token_check expires_at %v (live %v), want %v", at, ok, later)
	}
	// A shorter deadline replaces a longer one too.
	sooner := time.Now().Add(30 * time.Minute)
	mustCommit(t, s, token, []byte("third"), sooner)
	mustFind(t, s, token, []byte("third"))
	if at, ok := deadline(t, token); !ok || !sameInstant(at, sooner) {
		t.Fatalf("token_check expires_at %v (live %v), want %v", at, ok, sooner)
	}
}

func TestCommitEmpty(t *testing.T) {
	s := New(testDB)
	for _, data := range [][]byte{nil, {}} {
		token := newToken(t)
		mustCommit(t, s, token, data, time.Now().Add(time.Minute))
		b, found, err := s.Find(token)
		if err != nil || !found || len(b) != 0 {
			t.Fatalf("Find after Commit(%#v): got %q, %v, %v; want found, empty", data, b, found, err)
		}
	}
}

func TestExpiry(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	mustCommit(t, s, token, []byte("encoded_data"), time.Now().Add(300*time.Millisecond))
	mustFind(t, s, token, []byte("encoded_data"))
	time.Sleep(400 * time.Millisecond)
	mustNotFind(t, s, token)
	if _, ok := deadline(t, token); ok {
		t.Fatal("token_check: a row for an expired session")
	}
}

func TestCommitExtendsExpiry(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	mustCommit(t, s, token, []byte("a"), time.Now().Add(300*time.Millisecond))
	mustCommit(t, s, token, []byte("b"), time.Now().Add(time.Hour))
	time.Sleep(400 * time.Millisecond)
	mustFind(t, s, token, []byte("b"))
}

// SCS commits a session with an expiry in the past to end it.
func TestCommitPastExpiry(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	mustCommit(t, s, token, []byte("live"), time.Now().Add(time.Hour))
	mustFind(t, s, token, []byte("live"))
	mustCommit(t, s, token, []byte("ended"), time.Now().Add(-time.Second))
	mustNotFind(t, s, token)

	// A first commit in the past makes no live session either.
	fresh := newToken(t)
	mustCommit(t, s, fresh, []byte("never live"), time.Now().Add(-time.Hour))
	mustNotFind(t, s, fresh)

	// And the token can be committed again, live.
	mustCommit(t, s, token, []byte("again"), time.Now().Add(time.Hour))
	mustFind(t, s, token, []byte("again"))
}

func TestDelete(t *testing.T) {
	s := New(testDB)
	token := newToken(t)
	mustCommit(t, s, token, []byte("encoded_data"), time.Now().Add(time.Minute))
	if err := s.Delete(token); err != nil {
		t.Fatal(err)
	}
	mustNotFind(t, s, token)
	if _, ok := deadline(t, token); ok {
		t.Fatal("token_check: a row for a deleted session")
	}
	// Deleting again, or a token never seen, is a no-op.
	if err := s.Delete(token); err != nil {
		t.Fatalf("Delete of a deleted token: %v", err)
	}
	if err := s.Delete(newToken(t)); err != nil {
		t.Fatalf("Delete of an unknown token: %v", err)
	}
}

var tokenID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestAll(t *testing.T) {
	s := New(testDB)
	mark := string(randomBytes(t, 12)) // makes this test's payloads unique
	live := map[string][]byte{}
	for i := 0; i < 3; i++ {
		token := newToken(t)
		data := []byte(fmt.Sprintf("%s live %d \x00", mark, i))
		mustCommit(t, s, token, data, time.Now().Add(time.Minute))
		live[token] = data
	}
	expired := newToken(t)
	mustCommit(t, s, expired, []byte(mark+" expired"), time.Now().Add(-time.Minute))
	deleted := newToken(t)
	mustCommit(t, s, deleted, []byte(mark+" deleted"), time.Now().Add(time.Minute))
	if err := s.Delete(deleted); err != nil {
		t.Fatal(err)
	}

	all, err := s.All()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for id, data := range all {
		if !tokenID.MatchString(id) {
			t.Errorf("All: key %q is not a token_id handle (32 hex characters)", id)
		}
		for token := range live {
			if id == token {
				t.Errorf("All: keyed by a token itself")
			}
		}
		if bytes.HasPrefix(data, []byte(mark)) {
			seen[string(data)]++
		}
	}
	for _, data := range live {
		if seen[string(data)] != 1 {
			t.Errorf("All: live payload %q listed %d times, want once", data, seen[string(data)])
		}
	}
	if len(seen) != len(live) {
		t.Errorf("All: %d of this test's payloads listed, want the %d live ones: %q", len(seen), len(live), seen)
	}

	// A key of All ends its session through DeleteID (Delete takes tokens).
	var first string
	for token := range live {
		first = token
		break
	}
	for id, data := range all {
		if bytes.Equal(data, live[first]) {
			if err := s.Delete(id); err != nil {
				t.Fatalf("Delete(handle): %v", err)
			}
			mustFind(t, s, first, live[first])
			if err := s.DeleteID(id); err != nil {
				t.Fatalf("DeleteID: %v", err)
			}
			mustNotFind(t, s, first)
			if err := s.DeleteIDCtx(context.Background(), id); err != nil {
				t.Fatalf("DeleteIDCtx of a dead handle: %v", err)
			}
		}
	}

	if err := s.DeleteID("not a token_id"); err == nil {
		t.Error("DeleteID of a malformed handle: no error")
	}

	// AllCtx agrees, and deleting the live ones takes them out of the list.
	for token := range live {
		if err := s.Delete(token); err != nil {
			t.Fatal(err)
		}
	}
	all, err = s.AllCtx(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if all == nil {
		t.Fatal("AllCtx: nil map")
	}
	for _, data := range all {
		if bytes.HasPrefix(data, []byte(mark)) {
			t.Errorf("AllCtx: dead payload %q listed", data)
		}
	}
}

// Two requests commit a new session at once: both succeed, one wins.
func TestConcurrentFirstCommit(t *testing.T) {
	s := New(testDB)
	for round := 0; round < 25; round++ {
		token := newToken(t)
		payloads := [][]byte{[]byte("first writer"), []byte("second writer")}
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, len(payloads))
		for i := range payloads {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				errs[i] = s.Commit(token, payloads[i], time.Now().Add(time.Minute))
			}(i)
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: concurrent first Commit %d: %v", round, i, err)
			}
		}
		b, found, err := s.Find(token)
		if err != nil || !found {
			t.Fatalf("round %d: Find after concurrent commits: found=%v err=%v", round, found, err)
		}
		if !bytes.Equal(b, payloads[0]) && !bytes.Equal(b, payloads[1]) {
			t.Fatalf("round %d: Find got %q, want one writer's payload", round, b)
		}
	}
}

func TestLargePayload(t *testing.T) {
	s := New(testDB)
	for _, n := range []int{4 << 10, 64 << 10} {
		token := newToken(t)
		data := randomBytes(t, n)
		mustCommit(t, s, token, data, time.Now().Add(time.Minute))
		mustFind(t, s, token, data)
		// Replaced by another payload of the same size.
		data2 := randomBytes(t, n)
		mustCommit(t, s, token, data2, time.Now().Add(time.Minute))
		mustFind(t, s, token, data2)
	}
}

func TestContext(t *testing.T) {
	s := New(testDB)
	ctx := context.Background()
	token := newToken(t)
	if err := s.CommitCtx(ctx, token, []byte("ctx"), time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	b, found, err := s.FindCtx(ctx, token)
	if err != nil || !found || string(b) != "ctx" {
		t.Fatalf("FindCtx: got %q, %v, %v", b, found, err)
	}
	if err := s.DeleteCtx(ctx, token); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.FindCtx(ctx, token); err != nil || found {
		t.Fatalf("FindCtx after DeleteCtx: found=%v err=%v", found, err)
	}

	// A cancelled context is an error, not "not found".
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := s.FindCtx(cancelled, token); err == nil {
		t.Fatal("FindCtx with a cancelled context: no error")
	}
	if err := s.CommitCtx(cancelled, token, []byte("x"), time.Now().Add(time.Minute)); err == nil {
		t.Fatal("CommitCtx with a cancelled context: no error")
	}
}
