'use strict'

/*
 * connect-tokenstore: an express-session store backed by the tokenstore
 * PostgreSQL extension (1.2 or later).  Session ids are stored hashed
 * (SHA-256) by the extension; the session itself is kept byte for byte as
 * the UTF-8 of JSON.stringify(session).
 */

const { Store } = require('express-session')
const pg = require('pg')

const ONE_DAY = 24 * 60 * 60 // seconds

/* How many sessions' cookie expiries a store remembers between the get()
 * (or set()) and the touch() of one request; see touch(). */
const REMEMBERED = 10000

const SQL = {
  get: 'SELECT tokenstore.token_data($1) AS data',
  set: 'SELECT tokenstore.token_save($1, NULL, $2, $3) AS created',
  destroy: 'SELECT tokenstore.token_delete($1) AS deleted',
  touch: 'SELECT tokenstore.token_touch($1) AS live',
  // A touch whose deadline moved saves the session again, but only a live
  // one: a touch never brings back a session that was destroyed or expired.
  // NULL: nothing was live; true: it died between the two calls and the
  // save made it anew (touch() deletes it again).
  touchSave: 'SELECT CASE WHEN tokenstore.token_touch($1)' +
    ' THEN tokenstore.token_save($1, NULL, $2, $3) END AS created',
  all: 'SELECT token_id, data FROM tokenstore.token_sessions()',
  length: 'SELECT count(*) AS n FROM tokenstore.token_sessions()',
  clear: 'SELECT tokenstore.token_delete_sessions() AS deleted'
}

/* The session's cookie expiry in ms since the epoch, or null for a cookie
 * without one (a browser-session cookie). */
function cookieExpiry (session) {
  const expires = session && session.cookie && session.cookie.expires
  if (expires === undefined || expires === null || expires === false) return null
  const ms = (expires instanceof Date ? expires : new Date(expires)).getTime()
  if (Number.isNaN(ms)) {
    throw new TypeError('connect-tokenstore: session.cookie.expires is not a date: ' + String(expires))
  }
  return ms
}

/* Calls callback (outside the promise chain, so that a throwing callback is
 * an ordinary uncaught exception) or, without one, returns the promise. */
function settle (promise, callback) {
  if (typeof callback !== 'function') return promise
  promise.then(
    (value) => process.nextTick(callback, null, value),
    (err) => process.nextTick(callback, err)
  )
  return undefined
}

class TokenstoreStore extends Store {
  /**
   * @param {object} [options]
   * @param {import('pg').Pool} [options.pool] a pg.Pool to use (the store never ends it)
   * @param {string} [options.conString] a connection string for a pool of the store's own
   * @param {number} [options.ttl=86400] seconds a session whose cookie has no expiry lives after a save
   */
  constructor (options) {
    super()
    const opts = options || {}
    const ttl = opts.ttl === undefined ? ONE_DAY : opts.ttl
    if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl <= 0) {
      throw new TypeError('connect-tokenstore: ttl must be a positive number of seconds')
    }
    this.ttl = ttl
    if (opts.pool) {
      this.pool = opts.pool
      this.ownsPool = false
    } else {
      // No conString: pg's defaults, that is PGHOST, PGPORT, PGDATABASE, PGUSER...
      this.pool = new pg.Pool(opts.conString ? { connectionString: opts.conString } : {})
      this.ownsPool = true
      // An idle client that loses its connection must not crash the process.
      this.pool.on('error', (err) => {
        if (this.listenerCount('error') > 0) this.emit('error', err)
      })
    }
    // sid -> cookie expiry (ms or null) as last read or written by this store
    this.expiries = new Map()
  }

  remember (sid, expiry) {
    this.expiries.delete(sid)
    this.expiries.set(sid, expiry)
    if (this.expiries.size > REMEMBERED) {
      this.expiries.delete(this.expiries.keys().next().value)
    }
  }

  /* The deadline token_save gets: the cookie's expiry, or now + ttl. */
  deadline (expiry) {
    return new Date(expiry !== null ? expiry : Date.now() + this.ttl * 1000).toISOString()
  }

  async query (text, values) {
    const result = await this.pool.query(text, values)
    return result.rows
  }

  /** callback(err, session or null) */
  get (sid, callback) {
    return settle((async () => {
      const [row] = await this.query(SQL.get, [sid])
      if (!row || row.data === null) {
        this.expiries.delete(sid)
        return null
      }
      const session = JSON.parse(row.data.toString('utf8'))
      this.remember(sid, cookieExpiry(session))
      return session
    })(), callback)
  }

  /** callback(err) */
  set (sid, session, callback) {
    return settle((async () => {
      const expiry = cookieExpiry(session)
      const data = Buffer.from(JSON.stringify(session), 'utf8')
      await this.query(SQL.set, [sid, data, this.deadline(expiry)])
      this.remember(sid, expiry)
    })(), callback)
  }

  /** callback(err) */
  destroy (sid, callback) {
    return settle((async () => {
      this.expiries.delete(sid)
      await this.query(SQL.destroy, [sid])
    })(), callback)
  }

  /**
   * callback(err).  When the cookie's expiry is the one this store last read
   * or wrote for sid, token_touch (no write).  Otherwise the deadline moved
   * (a cookie with maxAge moves on every request): the session is saved
   * again, as long as it is still live.
   */
  touch (sid, session, callback) {
    return settle((async () => {
      const expiry = cookieExpiry(session)
      if (this.expiries.has(sid) && this.expiries.get(sid) === expiry) {
        const [row] = await this.query(SQL.touch, [sid])
        if (!row.live) this.expiries.delete(sid)
        return
      }
      const data = Buffer.from(JSON.stringify(session), 'utf8')
      const [row] = await this.query(SQL.touchSave, [sid, data, this.deadline(expiry)])
      if (row.created === null) {
        this.expiries.delete(sid) // dead: nothing to touch
      } else if (row.created === true) {
        // destroyed between token_touch and token_save: end it again
        this.expiries.delete(sid)
        await this.query(SQL.destroy, [sid])
      } else {
        this.remember(sid, expiry)
      }
    })(), callback)
  }

  /**
   * callback(err, sessions): every live session of the database, as an
   * object keyed by its token_id (a 32-hex handle, never the session id:
   * tokenstore keeps only hashes).  A payload that is not a JSON object (a
   * session another framework saved in the same database) is left out.
   */
  all (callback) {
    return settle((async () => {
      const rows = await this.query(SQL.all)
      const sessions = {}
      for (const row of rows) {
        let session
        try {
          session = JSON.parse(row.data.toString('utf8'))
        } catch (err) {
          continue
        }
        if (session !== null && typeof session === 'object' && !Array.isArray(session)) {
          sessions[row.token_id] = session
        }
      }
      return sessions
    })(), callback)
  }

  /** callback(err, n): how many live sessions the database has. */
  length (callback) {
    return settle((async () => {
      const [row] = await this.query(SQL.length)
      return Number(row.n)
    })(), callback)
  }

  /** callback(err): revokes every session of the database. */
  clear (callback) {
    return settle((async () => {
      this.expiries.clear()
      await this.query(SQL.clear)
    })(), callback)
  }

  /** Ends the store's own pool (a pool passed in is the caller's to end). */
  close (callback) {
    return settle(this.ownsPool ? this.pool.end() : Promise.resolve(), callback)
  }
}

module.exports = TokenstoreStore
module.exports.TokenstoreStore = TokenstoreStore
module.exports.default = TokenstoreStore
