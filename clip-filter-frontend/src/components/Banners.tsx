import type { Banner } from '../lib/banners'

export function Banners({ banners }: { banners: Banner[] }) {
  if (banners.length === 0) return null
  return (
    <div className="banners">
      {banners.map((b) => (
        <div key={b.id} role={b.role} className={`banner banner-${b.id}`} data-testid={`banner-${b.id}`}>
          <strong>{b.title}</strong>
          {b.detail && <span className="banner-detail"> {b.detail}</span>}
          {b.fix && (
            <span className="banner-fix">
              {' '}
              <em>Fix:</em> {b.fix}
            </span>
          )}
        </div>
      ))}
    </div>
  )
}
