import { useEffect, useState, type ImgHTMLAttributes } from 'react'
import { fetchObjectUrl, mediaNeedsKey } from '../lib/api'

/**
 * An <img> that turns into a quiet placeholder when it cannot be shown (an undecodable file, a 404). When the
 * API needs a key, the image is fetched with it (an <img> cannot send headers) and shown from an object URL.
 */
export function SafeImg({ className, alt, src, ...rest }: ImgHTMLAttributes<HTMLImageElement> & { alt: string }) {
  const [broken, setBroken] = useState(false)
  const withKey = mediaNeedsKey(src)
  const [objectUrl, setObjectUrl] = useState<string | null>(null)
  useEffect(() => setBroken(false), [src])
  useEffect(() => {
    if (!withKey || !src) return
    let cancelled = false
    let made: string | null = null
    fetchObjectUrl(src).then(
      (url) => {
        made = url
        if (cancelled) URL.revokeObjectURL(url)
        else setObjectUrl(url)
      },
      () => !cancelled && setBroken(true),
    )
    return () => {
      cancelled = true
      if (made) URL.revokeObjectURL(made)
      setObjectUrl(null)
    }
  }, [src, withKey])
  const shown = withKey ? objectUrl : src
  if (broken || !src) {
    return (
      <span className={`${className ?? ''} img-placeholder`} role="img" aria-label={alt} title={`${alt}: no preview`}>
        no preview
      </span>
    )
  }
  if (!shown) return <span className={`${className ?? ''} img-loading`} role="img" aria-label={alt} aria-busy="true" />
  return <img className={className} alt={alt} src={shown} onError={() => setBroken(true)} {...rest} />
}
