// Package tokenstore is a session store for SCS (github.com/alexedwards/scs/v2)
// that keeps sessions in PostgreSQL through the tokenstore extension (1.2 or
// later). The extension stores each session id hashed with SHA-256: a dump or
// a curious operator sees no usable token.
//
//	db, err := sql.Open("postgres", dsn) // any database/sql PostgreSQL driver
//	...
//	sessionManager := scs.New()
//	sessionManager.Store = tokenstore.New(db)
//
// Each method is one statement, calling a function of the extension:
//
//	Find     SELECT tokenstore.token_data($1)
//	Commit   SELECT tokenstore.token_save($1, NULL, $2, $3)
//	Delete   SELECT tokenstore.token_delete($1)
//	All      SELECT token_id, data FROM tokenstore.token_sessions()
//	DeleteID SELECT tokenstore.token_delete_id($1)
//
// The role the *sql.DB connects as needs
//
//	GRANT USAGE ON SCHEMA tokenstore TO app;
//	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tokenstore TO app;
//
// The package imports database/sql only: the program picks the driver (the
// tests use github.com/lib/pq).
package tokenstore

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

const (
	findQuery     = "SELECT tokenstore.token_data($1)"
	commitQuery   = "SELECT tokenstore.token_save($1, NULL, $2, $3)"
	deleteQuery   = "SELECT tokenstore.token_delete($1)"
	allQuery      = "SELECT token_id, data FROM tokenstore.token_sessions()"
	deleteIDQuery = "SELECT tokenstore.token_delete_id($1)"
)

// Store is an SCS session store backed by the tokenstore extension. It
// implements scs.Store, scs.CtxStore, scs.IterableStore and
// scs.IterableCtxStore. It is safe for concurrent use, as *sql.DB is.
//
// Expired sessions need no cleanup goroutine: the extension never answers a
// dead session, and its background worker (or a scheduled
// tokenstore.token_sweep() when the library is not preloaded) removes them.
type Store struct {
	db *sql.DB
}

// New returns a Store that runs its statements on db.
func New(db *sql.DB) *Store {
	return &Store{db: db}
}

// Find returns the data of the live session token. found is false (and err
// nil) when the token is unknown, expired, deleted, or one that PostgreSQL
// text cannot carry (a NUL byte, invalid UTF-8): SCS reads tokens from
// cookies, and a tampered one is simply not found.
func (s *Store) Find(token string) (b []byte, found bool, err error) {
	return s.FindCtx(context.Background(), token)
}

// FindCtx is Find with a context.
func (s *Store) FindCtx(ctx context.Context, token string) (b []byte, found bool, err error) {
	err = s.db.QueryRowContext(ctx, findQuery, token).Scan(&b)
	if err != nil {
		if malformedToken(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	if b == nil { // SQL NULL: no live session
		return nil, false, nil
	}
	return b, true, nil
}

// Commit makes the session token with data b, or replaces the data and the
// deadline of the live one, in one statement (safe when two requests commit
// a new token at once: both succeed and one's data wins). The session ends at
// expiry; an expiry in the past ends it at once, as SCS expects. The session
// is anonymous for the extension (no user_id), and keeps no idle timeout of
// its own unless the server sets tokenstore.default_idle_timeout (SCS puts its
// idle timeout into expiry).
func (s *Store) Commit(token string, b []byte, expiry time.Time) error {
	return s.CommitCtx(context.Background(), token, b, expiry)
}

// CommitCtx is Commit with a context.
func (s *Store) CommitCtx(ctx context.Context, token string, b []byte, expiry time.Time) error {
	if b == nil {
		b = []byte{} // the extension stores NULL as an empty payload too; be explicit
	}
	_, err := s.db.ExecContext(ctx, commitQuery, token, b, expiry)
	return err
}

// Delete ends the session token. Deleting an unknown, dead or malformed
// token is a no-op that returns nil.
func (s *Store) Delete(token string) error {
	return s.DeleteCtx(context.Background(), token)
}

// DeleteCtx is Delete with a context.
func (s *Store) DeleteCtx(ctx context.Context, token string) error {
	_, err := s.db.ExecContext(ctx, deleteQuery, token)
	if err != nil && malformedToken(err) {
		return nil
	}
	return err
}

// DeleteID ends the session whose token_id handle (a key of All's map) is
// tokenID: what Delete is to a token. An unknown or dead handle is a no-op
// that returns nil; a malformed one (not 32 hex characters) is an error.
// Not part of SCS's interfaces: SCS's Iterate hands All's keys to its
// callback as tokens, so a Destroy inside Iterate calls Delete with a handle,
// which ends nothing; call DeleteID instead.
func (s *Store) DeleteID(tokenID string) error {
	return s.DeleteIDCtx(context.Background(), tokenID)
}

// DeleteIDCtx is DeleteID with a context.
func (s *Store) DeleteIDCtx(ctx context.Context, tokenID string) error {
	_, err := s.db.ExecContext(ctx, deleteIDQuery, tokenID)
	return err
}

// All returns the data of every live session (made by token_save, by this
// store or any other client of the database), keyed by the session's
// token_id handle (32 hex characters), NOT by its token: the extension keeps
// only a hash of each token, so the tokens themselves cannot be listed. The
// keys can therefore not be handed to Find, Delete or the SCS session manager.
// With no live session the map is empty, not nil.
func (s *Store) All() (map[string][]byte, error) {
	return s.AllCtx(context.Background())
}

// AllCtx is All with a context; see All for what the keys are.
func (s *Store) AllCtx(ctx context.Context) (map[string][]byte, error) {
	rows, err := s.db.QueryContext(ctx, allQuery)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	sessions := make(map[string][]byte)
	for rows.Next() {
		var id string
		var data []byte
		if err := rows.Scan(&id, &data); err != nil {
			return nil, err
		}
		if data == nil {
			data = []byte{}
		}
		sessions[id] = data
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return sessions, nil
}

// malformedToken tells whether err is PostgreSQL refusing the token's bytes
// as text: invalid byte sequence (a NUL byte, invalid UTF-8: 22021) or a
// character the server encoding lacks (22P05). Drivers expose the SQLSTATE
// as a SQLState method (lib/pq's *pq.Error, pgx's *pgconn.PgError).
func malformedToken(err error) bool {
	var e interface{ SQLState() string }
	if !errors.As(err, &e) {
		return false
	}
	switch e.SQLState() {
	case "22021", "22P05":
		return true
	}
	return false
}
