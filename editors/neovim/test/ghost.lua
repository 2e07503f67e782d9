-- Headless end-to-end test: types into a python buffer, waits for the ghost text, takes its first
-- word with <M-Right>, the rest with <Tab>, and checks the line and the server's counters; then
-- that codestral/suggestionUpdated at the cursor asks again (elsewhere not) and what the statusline
-- function says.
--   nvim --headless -u NONE -i NONE -c 'luafile test/ghost.lua'
-- Env: CODESTRAL_LS (server), CODESTRAL_RENDERER (auto|native|extmark), CODESTRAL_TIMEOUT (s, per wait).
local root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h')
vim.opt.runtimepath:prepend(root)
local api = vim.api
local h = dofile(root .. '/test/harness.lua')
local log, finish, wait_for = h.log, h.finish, h.wait_for
vim.o.showmode = false

local function feed(keys)
  api.nvim_feedkeys(api.nvim_replace_termcodes(keys, true, false, true), 't', false)
end

h.run(function()
  local codestral = require('codestral')
  codestral.setup({
    cmd = { (assert(os.getenv('CODESTRAL_LS'), 'set CODESTRAL_LS')) },
    init_options = { budgetMs = 0 },
    filetypes = { 'python' },
    renderer = os.getenv('CODESTRAL_RENDERER') or 'auto',
  })
  local native = codestral.native()
  assert(native or os.getenv('CODESTRAL_RENDERER') ~= 'native', 'no vim.lsp.inline_completion in this Neovim')
  local v = vim.version()
  log(('Neovim %d.%d.%d, %s renderer'):format(v.major, v.minor, v.patch, native and 'native' or 'extmark'))

  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir, 'p')
  vim.cmd('edit ' .. dir .. '/add.py')
  local buf = api.nvim_get_current_buf()
  api.nvim_buf_set_lines(buf, 0, -1, false, { 'def add(a, b):', '    ' })
  vim.bo[buf].filetype = 'python'
  wait_for('the client to attach', function()
    return vim.fn.maparg('<Tab>', 'i', false, true).buffer == 1
  end, 60000)
  log('attached')

  local ns = native and api.nvim_get_namespaces()['nvim.lsp.inline_completion'] or require('codestral.ghost').ns
  local function ghost()
    for _, m in ipairs(api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })) do
      local chunks = m[4].virt_text or {}
      local text = table.concat(vim.tbl_map(function(c) return c[1] end, chunks))
      if text ~= '' or m[4].virt_lines then
        return text
      end
    end
  end
  local function line()
    return api.nvim_buf_get_lines(buf, 1, 2, true)[1]
  end

  api.nvim_win_set_cursor(0, { 2, 4 })
  feed('Areturn ')
  log(('ghost text: %q'):format(wait_for('the ghost text', ghost)))
  feed('<M-Right>')
  wait_for('the first word to be accepted', function() return line() ~= '    return ' end, 5000)
  log(('after <M-Right>: %q'):format(line()))
  log(('ghost text: %q'):format(wait_for('the rest of the ghost text', ghost)))
  feed('<Tab>')
  wait_for('the rest to be accepted', function() return line() ~= '    return a' end, 5000)
  assert(line() == '    return a + b', ('line 2 is %q, expected "    return a + b"'):format(line()))
  assert(api.nvim_get_mode().mode:match('^i'), 'left insert mode')

  local stats
  wait_for('codestral/stats to count the accept', function()
    codestral.stats(function(result)
      stats = result
    end)
    return stats and stats.accepted >= 1 and stats.partially_accepted >= 1
  end, 10000)
  log(('stats: accepted=%d partially_accepted=%d suggestions=%d'):format(
    stats.accepted, stats.partially_accepted, stats.suggestions))

  -- codestral/suggestionUpdated: at the cursor a new request goes out with no keystroke.
  local client = (vim.lsp.get_clients or vim.lsp.get_active_clients)({ name = 'codestral' })[1]
  local sent = 0
  local request = client.request
  client.request = function(...)
    local a = { ... }
    if (a[1] == client and a[2] or a[1]) == 'textDocument/inlineCompletion' then
      sent = sent + 1
    end
    return request(...)
  end
  local notify = client.handlers['codestral/suggestionUpdated']
  local uri = vim.uri_from_bufnr(buf)
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local ctx = { client_id = client.id, method = 'codestral/suggestionUpdated' }
  notify(nil, { textDocument = { uri = uri }, position = { line = 0, character = 0 } }, ctx)
  assert(sent == 0, 'codestral/suggestionUpdated away from the cursor sent a request')
  notify(nil, { textDocument = { uri = uri }, position = { line = row - 1, character = col } }, ctx)
  wait_for('a request after codestral/suggestionUpdated', function() return sent > 0 end, 2000)
  client.request = request
  log(('codestral/suggestionUpdated at the cursor: %d request(s)'):format(sent))

  local caps = client.server_capabilities.experimental
  local status = codestral.statusline()
  log(('statusline: %q'):format(status))
  if caps and caps.codestral and caps.codestral.status then
    assert(status:match('^codestral: '), 'the statusline function says nothing')
  end
  feed('<Esc>')

  -- The cursor comes to rest on another line: codestral/didFocus tells the server (once, debounced).
  if caps and caps.codestral and caps.codestral.didFocus then
    local focused = {}
    local notify = client.notify
    client.notify = function(...)
      local a = { ... }
      local method, params = (a[1] == client and a[2] or a[1]), (a[1] == client and a[3] or a[2])
      if method == 'codestral/didFocus' then
        table.insert(focused, params)
      end
      return notify(...)
    end
    wait_for('normal mode', function() return not api.nvim_get_mode().mode:match('^i') end, 2000)
    api.nvim_win_set_cursor(0, { 1, 0 })
    api.nvim_win_set_cursor(0, { 1, 3 }) -- moves within the line: no second notification
    wait_for('codestral/didFocus', function() return #focused > 0 end, 3000)
    vim.wait(400)
    client.notify = notify
    assert(#focused == 1, ('%d codestral/didFocus notifications, expected 1'):format(#focused))
    assert(focused[1].position.line == 0 and focused[1].textDocument.uri == uri, vim.inspect(focused[1]))
    log(('codestral/didFocus: line %d'):format(focused[1].position.line))
  end
  finish(true, ('line 2 is %q'):format(line()))
end)
