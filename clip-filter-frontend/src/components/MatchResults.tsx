import { SafeImg } from './SafeImg'
import type { MatchResponse, MatchResult, MatchScored } from '../lib/types'

export function formatPercent(p: number): string {
  if (!Number.isFinite(p)) return '–'
  const pct = p * 100
  if (pct > 0 && pct < 0.1) return '<0.1%'
  return `${pct.toFixed(1)}%`
}

export function formatScore(s: number): string {
  return Number.isFinite(s) ? s.toFixed(3) : '–'
}

function isScored(r: MatchResult): r is MatchScored {
  return !('error' in r) || !r.error
}

interface MatchResultsProps {
  response: MatchResponse
  /** Preview URL per image index (object URLs of the files sent). */
  previews?: (string | undefined)[]
}

export function MatchResults({ response, previews = [] }: MatchResultsProps) {
  const truncated = response.truncated ?? []
  return (
    <section className="match-results" aria-label="Match results">
      {response.weights === 'random' && (
        <p className="weights-note" data-testid="response-weights">
          These scores come from <strong>random weights</strong> and are meaningless.
        </p>
      )}
      <ul className="result-cards">
        {response.results.map((r) => (
          <li key={r.index} className="result-card" data-testid="match-result">
            <ResultCard result={r} texts={response.texts} truncated={truncated} preview={previews[r.index]} />
          </li>
        ))}
      </ul>
    </section>
  )
}

function ResultCard({
  result,
  texts,
  truncated,
  preview,
}: {
  result: MatchResult
  texts: string[]
  truncated: boolean[]
  preview?: string
}) {
  const name = result.filename || `image ${result.index + 1}`
  return (
    <article aria-label={`Result for ${name}`}>
      <header className="result-header">
        <SafeImg className="result-thumb" src={preview} alt={name} />
        <div>
          <div className="result-filename" title={name}>
            {name}
          </div>
          {isScored(result) ? (
            <div className="best-line">
              Best: <strong data-testid="best-caption">{result.best_match}</strong>
              {result.clip_score !== undefined && (
                <span className="muted" title="CLIPScore: 2.5 × max(cosine, 0)">
                  {' '}
                  · CLIPScore {result.clip_score.toFixed(3)}
                </span>
              )}
            </div>
          ) : null}
        </div>
      </header>
      {isScored(result) ? (
        <ol className="bars">
          {texts.map((text, i) => {
            const p = result.probabilities[i] ?? 0
            const best = i === result.best_index
            return (
              <li
                key={i}
                className={best ? 'bar-row best' : 'bar-row'}
                data-testid="caption-bar"
                data-best={best ? 'true' : 'false'}
                aria-current={best ? 'true' : undefined}
              >
                <div className="bar-label">
                  <span className="bar-text" title={text}>
                    {best && <span className="best-badge">best</span>}
                    {text}
                    {truncated[i] && (
                      <span className="truncated-badge" title="Longer than the model's context: cut to fit">
                        truncated
                      </span>
                    )}
                  </span>
                  <span className="bar-numbers">
                    <span data-testid="probability">{formatPercent(p)}</span>
                    <span className="muted" data-testid="cosine">
                      cos {formatScore(result.scores[i])}
                    </span>
                  </span>
                </div>
                <div
                  className="bar-track"
                  role="meter"
                  aria-label={`Probability of "${text}"`}
                  aria-valuemin={0}
                  aria-valuemax={1}
                  aria-valuenow={p}
                  aria-valuetext={formatPercent(p)}
                >
                  <div className="bar-fill" style={{ width: `${Math.max(0, Math.min(1, p)) * 100}%` }} />
                </div>
              </li>
            )
          })}
        </ol>
      ) : (
        <p className="result-error" data-testid="match-error">
          {result.error.message}
          {result.error.code && <span className="muted"> ({result.error.code})</span>}
        </p>
      )}
    </article>
  )
}
