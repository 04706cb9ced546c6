@echo off
rem Windows version of run_tests.sh: set up (first run) and run every test: backend unit + integration
rem (pytest, live uvicorn servers), web UI component tests (Vitest) and end-to-end tests in a headless
rem Chromium-based browser (Chrome or Edge) against a live backend.
rem Exit status: 0 only when every stage ran tests and all passed.
rem
rem   run_tests.bat            everything, locally (no Docker needed)
rem   run_tests.bat --docker   the unit and integration stages through docker compose
rem
rem Needs Python 3.10+ (python.org installer, or the py launcher) and Node.js 20+ on PATH. The browser
rem tests use CHROMIUM_PATH, or else an installed Google Chrome or Microsoft Edge.
setlocal EnableExtensions

set "ROOT=%~dp0"
if "%ROOT:~-1%"=="\" set "ROOT=%ROOT:~0,-1%"
if not defined CLIP_FILTER_VENV set "CLIP_FILTER_VENV=%ROOT%\.venv"
set "VENV=%CLIP_FILTER_VENV%"
set "BACKEND=%ROOT%\clip-filter-backend"
set "FRONTEND=%ROOT%\clip-filter-frontend"
set "ARTIFACTS=%ROOT%\test-artifacts"
rem Outside any ( ) block: the name holds parentheses.
set "PF86=%ProgramFiles(x86)%"
cd /d "%ROOT%" || exit /b 1

if /i "%~1"=="--docker" goto :docker

rem ---------------------------------------------------------------- Python: venv + backend install
rem CALL throughout: python or docker may be a .bat shim (pyenv-win), which would otherwise never return.
set "PYEXE=%PYTHON%"
if defined PYEXE goto :have_python
set "PYEXE=python"
where py >nul 2>nul
if not errorlevel 1 set "PYEXE=py -3"
:have_python
call %PYEXE% -c "import sys; sys.exit(sys.version_info < (3, 10))" >nul 2>nul
if errorlevel 1 (
    call :log "ERROR: Python 3.10+ not found: install it from python.org, or set PYTHON to its python.exe"
    exit /b 1
)
if not exist "%VENV%\Scripts\python.exe" (
    call :log "creating the virtual environment in %VENV%"
    call %PYEXE% -m venv "%VENV%"
    if errorlevel 1 (
        call :log "ERROR: could not create the virtual environment"
        exit /b 1
    )
)
set "VPY=%VENV%\Scripts\python.exe"

rem Reinstall only when the pins or the package metadata changed (the stamp is a copy of both files).
set "STAMP=%VENV%\.clip-filter-installed"
copy /b /y "%BACKEND%\requirements.lock" + "%BACKEND%\pyproject.toml" "%STAMP%.new" >nul
if errorlevel 1 (
    call :log "ERROR: clip-filter-backend\requirements.lock or pyproject.toml is missing"
    exit /b 1
)
if not exist "%STAMP%" goto :install_python
fc /b "%STAMP%.new" "%STAMP%" >nul 2>nul
if not errorlevel 1 goto :python_ready
:install_python
call :log "installing the backend and its pinned dependencies (torch is large: the first time takes a while)"
"%VPY%" -m pip install --disable-pip-version-check -q --upgrade "pip>=24"
set "CODE=%ERRORLEVEL%"
if not "%CODE%"=="0" (
    call :log "ERROR: pip upgrade failed"
    goto :fail_code
)
"%VPY%" -m pip install --disable-pip-version-check -q -c "%BACKEND%\requirements.lock" -e "%BACKEND%[test]"
set "CODE=%ERRORLEVEL%"
if not "%CODE%"=="0" (
    call :log "ERROR: pip install failed"
    goto :fail_code
)
move /y "%STAMP%.new" "%STAMP%" >nul
:python_ready
if exist "%STAMP%.new" del "%STAMP%.new"

rem ---------------------------------------------------------------- web UI: npm ci + build
where npm >nul 2>nul
if errorlevel 1 (
    call :log "ERROR: npm not found: install Node.js 20+ from nodejs.org"
    exit /b 1
)
set "NSTAMP=%FRONTEND%\node_modules\.clip-filter-installed"
if not exist "%NSTAMP%" goto :install_frontend
fc /b "%FRONTEND%\package-lock.json" "%NSTAMP%" >nul 2>nul
if not errorlevel 1 goto :frontend_installed
:install_frontend
call :log "installing the web UI's packages (npm ci)"
pushd "%FRONTEND%"
rem npm is npm.cmd: without CALL this script would end when it ends.
call npm ci --no-audit --no-fund
set "CODE=%ERRORLEVEL%"
popd
if not "%CODE%"=="0" (
    call :log "ERROR: npm ci failed"
    goto :fail_code
)
copy /y "%FRONTEND%\package-lock.json" "%NSTAMP%" >nul
:frontend_installed
call :log "building the web UI"
pushd "%FRONTEND%"
call npm run build --silent
set "CODE=%ERRORLEVEL%"
popd
if not "%CODE%"=="0" (
    call :log "ERROR: the web UI build failed"
    goto :fail_code
)

rem ---------------------------------------------------------------- browser for the end-to-end tests
if defined CHROMIUM_PATH (
    if exist "%CHROMIUM_PATH%" goto :browser_found
    call :log "ERROR: CHROMIUM_PATH is set to %CHROMIUM_PATH%, which does not exist"
    exit /b 1
)
for %%B in (
    "%ProgramFiles%\Google\Chrome\Application\chrome.exe"
    "%PF86%\Google\Chrome\Application\chrome.exe"
    "%LocalAppData%\Google\Chrome\Application\chrome.exe"
    "%ProgramFiles%\Chromium\Application\chrome.exe"
    "%LocalAppData%\Chromium\Application\chrome.exe"
    "%PF86%\Microsoft\Edge\Application\msedge.exe"
    "%ProgramFiles%\Microsoft\Edge\Application\msedge.exe"
) do (
    if not defined CHROMIUM_PATH if exist "%%~B" set "CHROMIUM_PATH=%%~B"
)
if not defined CHROMIUM_PATH (
    call :log "ERROR: no Chrome, Edge or Chromium found for the browser tests: install Google Chrome or set CHROMIUM_PATH to a chrome.exe or msedge.exe"
    exit /b 1
)
:browser_found
call :log "browser for the end-to-end tests: %CHROMIUM_PATH%"

rem ---------------------------------------------------------------- the test stages
if not exist "%ARTIFACTS%" mkdir "%ARTIFACTS%"
set "FAILED="
set "FIRST_CODE=0"

call :log "stage: backend - pytest"
"%VPY%" -m pytest "%BACKEND%\tests" -p no:cacheprovider --junitxml="%ARTIFACTS%\pytest.xml" -o junit_family=xunit2
call :stage_result "backend - pytest" %ERRORLEVEL%

call :log "stage: web UI components - vitest"
pushd "%FRONTEND%"
call npm test --silent
set "CODE=%ERRORLEVEL%"
popd
call :stage_result "web UI components - vitest" %CODE%

call :log "stage: end-to-end - browser"
pushd "%FRONTEND%"
call npm run e2e --silent
set "CODE=%ERRORLEVEL%"
popd
call :stage_result "end-to-end - browser" %CODE%

if not "%FIRST_CODE%"=="0" (
    call :log "FAILED stages:%FAILED%"
    exit /b %FIRST_CODE%
)
call :log "all stages passed; screenshots in %ARTIFACTS%\screenshots"
exit /b 0

rem ---------------------------------------------------------------- --docker: the compose stages
:docker
where docker >nul 2>nul
if errorlevel 1 (
    call :log "ERROR: docker not found"
    exit /b 1
)
call docker compose version >nul 2>nul
if errorlevel 1 (
    call :log "ERROR: the docker compose plugin is not installed - docker compose version fails"
    exit /b 1
)
rem The test backend runs the tiny random model; its own project name keeps its volumes apart from real data.
set "CLIP_MODEL=clip-filter-tiny"
set "CLIP_PRETRAINED=random"
set "CLIP_FILTER_START_PERIOD=3m"
set "COMPOSE=docker compose -f "%ROOT%\docker-compose.yml" -p clip-filter-test --profile test"
rem The backend requires API keys inside its container: a throwaway bootstrap key for this test stack.
if not defined CLIP_FILTER_API_KEY_FILE (
    set "CLIP_FILTER_API_KEY_FILE=%TEMP%\clip-filter-test-api-key"
    call python -c "import secrets; print(secrets.token_hex(32))" > "%TEMP%\clip-filter-test-api-key"
)
set "CODE=0"
call %COMPOSE% build
set "CODE=%ERRORLEVEL%"
if not "%CODE%"=="0" (
    call :log "ERROR: docker compose build failed"
    goto :docker_down
)
call :log "stage: unit tests - compose service unit-tests"
call %COMPOSE% run --rm unit-tests
set "CODE=%ERRORLEVEL%"
if not "%CODE%"=="0" (
    call :log "unit tests failed"
    goto :docker_down
)
call :log "starting the backend and waiting for its healthcheck"
call %COMPOSE% up -d --wait backend
set "CODE=%ERRORLEVEL%"
if not "%CODE%"=="0" (
    call :log "ERROR: the backend did not become healthy; its log:"
    call %COMPOSE% logs backend
    goto :docker_down
)
call :log "stage: integration tests - compose service integration-tests"
call %COMPOSE% run --rm integration-tests
set "CODE=%ERRORLEVEL%"
if not "%CODE%"=="0" (
    call :log "integration tests failed"
)
:docker_down
call %COMPOSE% down -v --remove-orphans
if "%CODE%"=="5" call :log "a stage collected no tests: that is a failure"
exit /b %CODE%

rem ---------------------------------------------------------------- helpers
:fail_code
if "%CODE%"=="0" set "CODE=1"
exit /b %CODE%

:stage_result
rem %1 stage name (quoted), %2 its exit code; pytest's 5 means "no tests collected": a failure too.
if "%~2"=="5" call :log "stage %~1 collected no tests: that is a failure"
if "%~2"=="0" exit /b 0
set "FAILED=%FAILED% [%~1: exit %~2]"
if "%FIRST_CODE%"=="0" set "FIRST_CODE=%~2"
exit /b 0

:log
echo [clip-filter] %~1 1>&2
exit /b 0
