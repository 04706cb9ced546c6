// The API key the user gave this browser (docs/security.md). Kept in localStorage for this origin only, sent as
// `Authorization: Bearer` by lib/api.ts, and forgotten on request. When the API answers 401, listeners are told so
// the app can ask for a key.

const STORED_KEY = 'clip-filter.api-key'

export function getApiKey(): string | null {
  try {
    return window.localStorage.getItem(STORED_KEY) || null
  } catch {
    return null
  }
}

export function setApiKey(key: string): void {
  try {
    window.localStorage.setItem(STORED_KEY, key.trim())
  } catch {
    // storage unavailable (private mode): the key lasts as long as this page
    memoryKey = key.trim()
  }
}

export function forgetApiKey(): void {
  memoryKey = null
  try {
    window.localStorage.removeItem(STORED_KEY)
  } catch {
    // nothing stored
  }
}

let memoryKey: string | null = null

/** The key to send now, if any. */
export function currentApiKey(): string | null {
  return getApiKey() ?? memoryKey
}

type Listener = () => void
const listeners = new Set<Listener>()

/** Called whenever the API answers 401 (no key, or a wrong or revoked one). Returns the unsubscribe function. */
export function onAuthRequired(listener: Listener): () => void {
  listeners.add(listener)
  return () => listeners.delete(listener)
}

export function notifyAuthRequired(): void {
  for (const listener of [...listeners]) listener()
}

/** Headers that carry the key, for requests made outside lib/api.ts (images, downloads). */
export function authHeaders(): Record<string, string> {
  const key = currentApiKey()
  return key ? { Authorization: `Bearer ${key}` } : {}
}
