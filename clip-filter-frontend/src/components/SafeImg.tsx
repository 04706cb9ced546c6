import { useEffect, useState, type ImgHTMLAttributes } from 'react'

/** An <img> that turns into a quiet placeholder when it cannot be shown (an undecodable file, a 404). */
export function SafeImg({ className, alt, src, ...rest }: ImgHTMLAttributes<HTMLImageElement> & { alt: string }) {
  const [broken, setBroken] = useState(false)
  useEffect(() => setBroken(false), [src])
  if (broken || !src) {
    return (
      <span className={`${className ?? ''} img-placeholder`} role="img" aria-label={alt} title={`${alt}: no preview`}>
        no preview
      </span>
    )
  }
  return <img className={className} alt={alt} src={src} onError={() => setBroken(true)} {...rest} />
}
