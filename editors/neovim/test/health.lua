-- Headless test of `:checkhealth codestral`: it runs, reports the server and no error.
--   nvim --headless -u NONE -i NONE -c 'luafile test/health.lua'
local root = vim.fn.fnamemodify(debug.getinfo(1, 'S').source:sub(2), ':p:h:h')
vim.opt.runtimepath:prepend(root)

local ok, err = pcall(function()
  require('codestral').setup({ cmd = { (assert(os.getenv('CODESTRAL_LS'), 'set CODESTRAL_LS')) } })
  vim.cmd('checkhealth codestral')
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  io.stderr:write(text .. '\n')
  assert(text:find('codestral%-ls %d'), 'no server version in the report')
  assert(not text:find('ERROR'), 'the report has an ERROR')
  assert(not text:find('WARNING'), 'the report has a WARNING')
end)
io.stderr:write((ok and 'PASS: checkhealth codestral' or ('FAIL: ' .. tostring(err))) .. '\n')
vim.cmd(ok and 'qall!' or 'cquit!')
